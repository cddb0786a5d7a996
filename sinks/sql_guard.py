"""What the SQL endpoint lets through: who may ask (token, origin), which statements and settings.

Pure checks, no I/O: ``sqlserver`` calls them before it runs anything. Each returns ``None``
when the request may go on, or raises :class:`Refused` carrying the ClickHouse error code, the
HTTP status and a ClickHouse-style message (``Code: N. DB::Exception: …``) that names the
thing refused and what is accepted instead. The password is never part of a message.

The statement check reads the statement *as ClickHouse formatted it* (``formatQuery``): the
server's own parser has already split statements, dropped comments, turned heredocs into plain
strings and unquoted identifiers where it could, so the lexer below only has to tell quoted
text from code - and it never treats anything as a comment, so nothing can hide from it.

Not guaranteed here: what a permitted SELECT costs (the limits are ClickHouse settings that
``sqlserver`` sets), nor anything about a caller who holds the token (they read the whole audit).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = [
    "ALLOWED_STATEMENTS",
    "DENIED_FUNCTIONS",
    "ENDPOINT_USER",
    "SAFE_TABLE_FUNCTIONS",
    "USER_SETTINGS",
    "Refused",
    "check_browser",
    "check_credentials",
    "check_settings",
    "check_statement",
    "denied_functions",
    "is_loopback",
]

#: the user name of the endpoint's one account (the password is the per-start token)
ENDPOINT_USER = "baton"

#: first keywords of the statements the endpoint runs: reads only
ALLOWED_STATEMENTS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN"})

#: functions and table functions that reach files, the network or other programs; refused
#: whatever ``readonly`` says (chDB runs ``SELECT file('/etc/passwd')`` under readonly=1)
DENIED_FUNCTIONS = frozenset(
    name.lower()
    for name in """
        file fileCluster filesystem url urlCluster s3 s3Cluster gcs cosn oss hdfs hdfsCluster
        azureBlobStorage azureBlobStorageCluster remote remoteSecure cluster clusterAllReplicas
        mysql postgresql mongodb redis sqlite jdbc odbc executable executablePool input python
        dictionary iceberg deltaLake hudi paimon ytsaurus arrowFlight bigquery prometheusQuery
        prometheusQueryRange eval fuzzJSON fuzzQuery
    """.split()  # noqa: SIM905
)

#: table functions that only compute or read this engine's own tables: everything else the
#: engine lists in system.table_functions is denied, so a new chDB's new connector is too
SAFE_TABLE_FUNCTIONS = frozenset(
    name.lower()
    for name in """
        numbers numbers_mt zeros zeros_mt generate_series generateSeries primes values view
        viewIfPermitted merge null generateRandom format SQLStandardValues
    """.split()  # noqa: SIM905
)

#: settings a request may set through URL parameters (exact names: a prefix such as
#: ``output_format_`` would also let ``output_format_schema`` write a file)
USER_SETTINGS = frozenset(
    {
        "date_time_output_format",
        "output_format_json_quote_64bit_integers",
        "output_format_json_quote_64bit_floats",
        "output_format_json_quote_decimals",
        "output_format_json_named_tuples_as_objects",
        "output_format_decimal_trailing_zeros",
        "output_format_arrow_string_as_string",
        "output_format_pretty_color",
        "output_format_pretty_max_rows",
        "join_use_nulls",
        "extremes",
    }
)

#: ClickHouse error codes used by the refusals
AUTHENTICATION_FAILED = 516
ACCESS_DENIED = 497
READONLY = 164


class Refused(Exception):
    """A request the endpoint will not run; ``str()`` is the ClickHouse-style error body."""

    def __init__(self, code: int, status: int, name: str, message: str) -> None:
        super().__init__(f"Code: {code}. DB::Exception: {ENDPOINT_USER}: {message}. ({name})")
        self.code = code
        self.status = status


def _denied(message: str) -> Refused:
    return Refused(ACCESS_DENIED, 403, "ACCESS_DENIED", message)


def _readonly(message: str) -> Refused:
    return Refused(READONLY, 403, "READONLY", message)


# ------------------------------------------------------------------------------ credentials


def check_credentials(
    headers: Mapping[str, str], params: Mapping[str, str], token: str, user: str = ENDPOINT_USER
) -> None:
    """Accept the request when it carries ``user`` and ``token`` the ways ClickHouse takes a
    user and password: HTTP Basic auth (``curl -u``, ``http://user:pass@host`` URLs,
    clickhouse-connect), ``X-ClickHouse-User``/``X-ClickHouse-Key`` headers, or ``user``/
    ``password`` URL parameters - exactly one of them. Both are compared in constant time."""
    given: list[tuple[str, str, str]] = []
    authorization = headers.get("Authorization")
    if authorization is not None:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            raise _auth_failed(f"the Authorization header uses {scheme[:20]!r}, expected Basic")
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise _auth_failed(
                "the Authorization header is not Basic base64(user:password)"
            ) from None
        name, sep, password = decoded.partition(":")
        if not sep:
            raise _auth_failed("the Authorization header holds no ':' between user and password")
        given.append(("the Authorization header", name, password))
    if "X-ClickHouse-User" in headers or "X-ClickHouse-Key" in headers:
        given.append(
            (
                "X-ClickHouse-User/-Key headers",
                headers.get("X-ClickHouse-User", ""),
                headers.get("X-ClickHouse-Key", ""),
            )
        )
    if "user" in params or "password" in params:
        given.append(
            ("user/password URL parameters", params.get("user", ""), params.get("password", ""))
        )
    if not given:
        raise _auth_failed("no credentials")
    if len(given) > 1:
        raise _auth_failed(
            "credentials given more than one way ("
            + ", ".join(where for where, _, _ in given)
            + "), expected exactly one"
        )
    where, name, password = given[0]
    # both compared, always: which one was wrong is not told by the time it took
    user_ok = hmac.compare_digest(name.encode(), user.encode())
    token_ok = hmac.compare_digest(password.encode(), token.encode())
    if not (user_ok and token_ok):
        raise _auth_failed(f"wrong user or token in {where}")


def _auth_failed(problem: str) -> Refused:
    return Refused(
        AUTHENTICATION_FAILED,
        401,
        "AUTHENTICATION_FAILED",
        f"Authentication failed: {problem}. The SQL endpoint takes user '{ENDPOINT_USER}' and "
        "the token of its current start: the sql=http://baton:TOKEN@HOST:PORT DSN on "
        "`baton up`'s ready line, or `dsn` in baton-sql-endpoint.json in its chDB directory "
        "(`baton sql` finds it there itself)",
    )


# ------------------------------------------------------------------------------ browsers

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "::1", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address, IPv6 with or without brackets) is this machine."""
    host = host.strip().lower().strip("[]")
    if host in _LOOPBACK_NAMES:
        return True
    parts = host.split(".")
    return len(parts) == 4 and parts[0] == "127" and all(p.isdigit() for p in parts)


def _split_host(value: str) -> tuple[str, int | None]:
    try:
        parts = urlsplit(f"//{value.strip()}")
        return (parts.hostname or ""), parts.port
    except ValueError:
        return "", None


def check_browser(headers: Mapping[str, str], port: int, loopback_only: bool) -> None:
    """Refuse what only a web browser sends on behalf of another site's page.

    - ``Origin`` (every cross-origin fetch/POST, and same-origin POSTs): the endpoint serves
      no page, so no origin is its own but itself (``http://<loopback>:<port>``);
    - ``Sec-Fetch-Site: cross-site`` / ``same-site`` (image tags, navigations, forms);
    - with a loopback bind, a ``Host`` that is not a loopback name (DNS rebinding: a page of
      evil.example whose name now points at 127.0.0.1 is "same origin" to the browser).
    """
    origin = headers.get("Origin")
    if origin is not None:
        parts = urlsplit(origin.strip())
        try:
            origin_port = parts.port or (80 if parts.scheme == "http" else None)
        except ValueError:
            origin_port = None
        if not (
            parts.scheme == "http" and is_loopback(parts.hostname or "") and origin_port == port
        ):
            raise _denied(
                f"cross-origin request refused: Origin {origin[:200]!r} is not this endpoint "
                f"(http://127.0.0.1:{port}); it answers no web pages, so a browser request "
                "from another site's page is never the operator's"
            )
    fetch_site = (headers.get("Sec-Fetch-Site") or "").strip().lower()
    if fetch_site in ("cross-site", "same-site"):
        raise _denied(
            f"cross-site request refused (Sec-Fetch-Site: {fetch_site}): the SQL endpoint "
            "takes requests from programs, not from web pages"
        )
    host_header = headers.get("Host")
    if loopback_only and host_header is not None:
        host, _ = _split_host(host_header)
        if not is_loopback(host):
            raise _denied(
                f"Host {host_header[:200]!r} refused: this endpoint listens on the loopback "
                "interface and answers only to 127.0.0.1, localhost or ::1 (a foreign name "
                "pointing here is DNS rebinding)"
            )


# ------------------------------------------------------------------------------ settings


def check_settings(settings: Mapping[str, str]) -> None:
    """Refuse URL parameters that would change a setting outside ``USER_SETTINGS``.
    ``readonly=1`` is accepted (it is what the endpoint enforces anyway)."""
    for name, value in settings.items():
        if name == "readonly":
            if value.strip() == "1":
                continue
            raise _readonly(
                f"Cannot modify 'readonly' setting in readonly mode: the SQL endpoint runs "
                f"every query with readonly=1, got readonly={value[:20]!r}"
            )
        if name not in USER_SETTINGS:
            raise _readonly(
                f"Cannot modify {name[:100]!r} setting in readonly mode: the SQL endpoint "
                f"takes only these settings as URL parameters: {', '.join(sorted(USER_SETTINGS))}"
            )


# ------------------------------------------------------------------------------ statements

# One token of ClickHouse's formatted SQL: quoted text (with backslash escapes and doubled
# quotes, as ClickHouse's lexer reads them), a word, whitespace, or any other single char.
# A quote that opens nothing closed is a lone char, and what follows it stays code: a lexing
# doubt shows more to the checks, never less.
_TOKEN_RE = re.compile(
    r"""
      (?P<string>'(?:[^'\\]|\\.|'')*')
    | (?P<quoted>`(?:[^`\\]|\\.|``)*`|"(?:[^"\\]|\\.|"")*")
    | (?P<word>[^\W\d]\w*)
    | (?P<space>\s+)
    | (?P<other>.)
    """,
    re.S | re.X,
)


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "string" | "word" (bare) | "quoted" (an identifier in ` or ") | "other"
    text: str  # a quoted identifier unescaped, as ClickHouse names it


_ESCAPES = {"0": "\0", "n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "a": "\a", "v": "\v"}
_ESCAPE_RE = re.compile(r"\\(x[0-9A-Fa-f]{2}|.)", re.S)


def _unescape(body: str) -> str:
    r"""ClickHouse's escapes in quoted text: ``\xHH`` (`\x66ile` names ``file``), ``\n`` and
    friends, a backslash before a quote or backslash; an unknown escape keeps its backslash
    (as ClickHouse does: `fi\le` names ``fi\le``)."""

    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if len(code) == 3:
            return chr(int(code[1:], 16))
        if code in _ESCAPES:
            return _ESCAPES[code]
        return code if code in "\\'\"`" else "\\" + code

    return _ESCAPE_RE.sub(one, body)


def _tokens(sql: str) -> Iterable[_Token]:
    for match in _TOKEN_RE.finditer(sql):
        kind = str(match.lastgroup)
        text = match.group()
        if kind == "space":
            continue
        if kind == "quoted":
            quote = text[0]
            text = _unescape(text[1:-1].replace(quote * 2, "\\" + quote))
        yield _Token(kind, text)


def denied_functions(table_functions: Iterable[str]) -> frozenset[str]:
    """The names ``check_statement`` refuses: ``DENIED_FUNCTIONS`` and every table function
    the engine offers (``system.table_functions``) but ``SAFE_TABLE_FUNCTIONS``, lower-cased."""
    listed = {name.lower() for name in table_functions}
    return DENIED_FUNCTIONS | frozenset(listed - SAFE_TABLE_FUNCTIONS)


def check_statement(formatted: str, denied: frozenset[str] = DENIED_FUNCTIONS) -> str:
    """Check one statement as ClickHouse's ``formatQuery`` printed it; returns its first
    keyword. Refused: anything but ``ALLOWED_STATEMENTS``; a second statement; ``INTO
    OUTFILE`` (chDB writes the file even with readonly=1) and ``INFILE``; a call of a name in
    ``denied`` (matched without case); ``readonly = …`` in a SETTINGS clause (readonly=1
    refuses every SETTINGS change too; this names the attempt)."""
    tokens = list(_tokens(formatted))
    while tokens and tokens[-1].kind == "other" and tokens[-1].text == ";":
        tokens.pop()
    leading = next((t for t in tokens if not (t.kind == "other" and t.text == "(")), None)
    first = leading.text.upper() if leading is not None and leading.kind == "word" else ""
    if first not in ALLOWED_STATEMENTS:
        shown = leading.text if leading is not None else "an empty statement"
        raise _readonly(
            f"Cannot execute query in readonly mode: the SQL endpoint runs only "
            f"{', '.join(sorted(ALLOWED_STATEMENTS))} statements, got {shown[:40]!r}"
        )
    in_settings = False  # past a SETTINGS keyword: `readonly = 0` there would lift it
    for index, token in enumerate(tokens):
        if token.kind == "other" and token.text == ";":
            raise Refused(
                62,
                400,
                "SYNTAX_ERROR",
                "Multi-statements are not allowed: the SQL endpoint runs one statement per request",
            )
        if token.kind not in ("word", "quoted"):
            continue
        upper = token.text.upper()
        if upper in ("OUTFILE", "INFILE"):
            raise _denied(
                f"{'INTO OUTFILE' if upper == 'OUTFILE' else 'FROM INFILE'} refused: the SQL "
                "endpoint returns results over HTTP and never touches files"
            )
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if upper == "SETTINGS":
            in_settings = True
        if upper == "READONLY" and in_settings and following is not None and following.text == "=":
            raise _readonly(
                "Cannot modify 'readonly' setting in readonly mode: the SQL endpoint runs every "
                "query with readonly=1"
            )
        if (
            following is not None
            and following.kind == "other"
            and following.text == "("
            and token.text.lower() in denied
        ):
            raise _denied(
                f"function {token.text[:60]!r} refused: the SQL endpoint reads only this "
                "audit's own tables, never files, URLs, other servers or programs"
            )
    return first
