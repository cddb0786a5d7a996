"""``baton alerts``: announce every stop, or ``check`` the SQL alert rules over the audit."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from baton.cli.audit_options import audit_client, dsn_option, query_settings, stop_on_signals
from baton.cli.help_listing import SentenceGroup
from baton.cli.options import FiniteFloatRange, setting_options
from baton.cli.stack_record import data_dir_option, stack_settings
from baton.schemas.settings import MAX_RETENTION_S

__all__ = ["alerts_check", "alerts_group"]


def _group_id(value: str | None) -> str | None:
    """A Kafka consumer group id: 1-249 printable ASCII characters (Kafka's topic-name
    bound, a sane one for groups), or None for the default."""
    if value is None:
        return None
    if not (0 < len(value) <= 249 and value.isascii() and value.isprintable()):
        raise click.BadParameter(
            f"expected 1-249 printable ASCII characters, got {value[:40]!r}"
            + (f"… ({len(value)} characters)" if len(value) > 40 else ""),
            param_hint="--group",
        )
    return value


@click.group("alerts", invoke_without_command=True, cls=SentenceGroup)
@setting_options(
    "bootstrap",
    "topic_prefix",
    "app_id",
    "session_timeout_s",
    "partitions",
    "replication_factor",
    "webhook_url",
    "decision_keys",
    "decision_keys_file",
    "metrics_port",
    "metrics_host",
    "log_format",
)
@click.option(
    "--storm-threshold",
    type=click.IntRange(0, 1_000_000),
    default=20,
    show_default=True,
    help="this many stops within --storm-window fold into one summary (0 = never)",
)
@click.option(
    "--storm-window",
    # 1e308 was taken: a storm never ended, every later stop folded into it (no alert) for ever
    type=FiniteFloatRange(min=0.1, max=3600),
    default=5.0,
    show_default=True,
    help="seconds in which --storm-threshold stops make a storm",
)
@click.option(
    "--group",
    "group_id",
    default=None,
    callback=lambda _ctx, _param, value: _group_id(value),
    help="Kafka consumer group: alerters in one group share the stops (each announced by "
    "one of them), alerters in different groups each announce every stop [default: "
    "APP_ID-alerts; the alerter of `baton up` uses APP_ID-up-alerts, so a `baton alerts` "
    "next to it also sees every stop]",
)
@data_dir_option
@click.option(
    "--max-age",
    type=FiniteFloatRange(min=0, max=MAX_RETENTION_S),
    default=3600.0,
    show_default=True,
    help="stops decided longer ago than this many seconds: skipped when a group first starts "
    "(its history), else folded into one late summary a minute (replays of old stops, or the "
    "alerter was down); 0 = any age, each announced",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="keep the stops announced in a file here, so a restart does not announce a copy of "
    "one again (made 0700 if missing; one alerter a directory) [env BATON_ALERTS_STATE_DIR; "
    "default none: memory only; the alerter of `baton up` uses DATA_DIR/alerts]",
)
@click.pass_context
def alerts_group(
    ctx: click.Context,
    storm_threshold: int,
    storm_window: float,
    max_age: float,
    group_id: str | None,
    data_dir: Path | None,
    state_dir: Path | None,
    **overrides: Any,
) -> None:
    """Announce every stop from gov.stops (console, and --webhook-url as Slack JSON), once per
    decision, storms folded. `baton alerts check` evaluates SQL alert rules instead.

    Given the workers' public keys (--decision-keys, BATON_DECISION_KEYS; a `baton up`
    stack's own), a stop none of them signed is not announced: logged and counted
    (baton_alerts_skipped_total{kind="unsigned"}). A stop decided longer ago than --max-age
    that it never announced (a copy of an old stop written to gov.stops again, or the alerter
    was down) is not paged alone: one late summary a minute names them (kind="late"); with
    --state-dir a restart remembers the stops announced before. While Kafka is unreachable it
    waits and retries (a line each time, at most 30 s apart), where `baton worker` exits 4 at
    once. Ends 0 on Ctrl-C or SIGTERM, also while retrying (nothing was read); 2 on a bad
    setting."""
    if ctx.invoked_subcommand is not None:
        return
    from baton.cli.log_format import LogOutput
    from baton.processors.metrics_audit import AlertMetrics
    from baton.processors.metrics_serve import serve_from_settings
    from baton.sinks.alerts import run_alerts

    settings = stack_settings(overrides, data_dir)
    output = LogOutput(settings.log_format, "alerts")
    output.install()
    watched = AlertMetrics()
    metrics = serve_from_settings(settings, watched)
    if metrics is not None:
        output.say(f"alerts: metrics on {metrics.url}")
    with stop_on_signals() as stop:
        alerter = run_alerts(
            settings,
            stop,
            storm_threshold=storm_threshold,
            storm_window_s=storm_window,
            max_age_s=max_age,
            group_id=group_id,
            state_dir=state_dir,
            emit=lambda text: click.echo(text),
            on_ready=watched.watch,
        )
    if alerter.duplicates:
        output.say(f"alerts: {alerter.duplicates} duplicate stops not announced again")
    if alerter.skipped.get("unsigned"):  # (a wrong key skips every real stop: h44b F3)
        output.say(
            f"alerts: {alerter.skipped['unsigned']} stops no key of decision_keys signed, not "
            "announced: forged, or the keys are not the workers' (then real stops were lost)"
        )


@alerts_group.command("check")
@click.option(
    "--rules",
    "rules_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="YAML rules (tune built-ins, add your own); built-ins if unset",
)
@click.option("--webhook-url", default=None, help="also post fired rules here (Slack JSON)")
@dsn_option
def alerts_check(
    rules_path: Path | None,
    webhook_url: str | None,
    clickhouse_dsn: str | None,
    data_dir: Path | None,
) -> None:
    """Evaluate SQL alert rules over the audit; exit 1 when any fired, 0 when none did
    (2 when a rule is broken)."""
    from baton.schemas.errors import ConfigError
    from baton.sinks.alerts import post_webhook
    from baton.sinks.render import render_table
    from baton.sinks.rules import evaluate_rules, load_rules

    parent = click.get_current_context().parent  # `baton alerts --data-dir DIR check`
    if data_dir is None and parent is not None:
        data_dir = parent.params.get("data_dir")
    settings = query_settings(clickhouse_dsn, data_dir)
    rules = load_rules(rules_path)
    if not webhook_url and settings.webhook_url is not None:
        webhook_url = settings.webhook_url.get_secret_value()
    if webhook_url:  # refused now, not found out when a rule fires (and then only logged)
        from baton.sinks.alert_post import check_webhook_url

        check_webhook_url(webhook_url)
    with audit_client(settings) as client:
        results = evaluate_rules(client, rules)
    fired = [r for r in results if r.fired]
    broken = [r for r in results if r.error]
    for result in results:
        if result.error:
            click.echo(f"ERROR  {result.rule.name}: {result.error}")
        elif result.fired:
            click.echo(f"FIRED  {result.rule.name}: {result.rule.summary()}")
            table = render_table(result.columns, result.rows)
            click.echo("\n".join("         " + line for line in table.splitlines()))
        else:
            click.echo(f"ok     {result.rule.name}")
    if webhook_url and fired:
        text = "🚨 Baton alert rules fired: " + "; ".join(
            f"{r.rule.name} ({len(r.rows)}): {r.rule.summary()}" for r in fired
        )
        post_webhook(webhook_url, text)
    if broken:
        raise ConfigError(
            f"{len(broken)} alert rule(s) failed: " + ", ".join(r.rule.name for r in broken)
        )
    sys.exit(1 if fired else 0)
