"""What leaves a site is decided here, by code the site installed, not by the researcher's FAB.

The site's executor (``deploy/warm_executor.py``, started by ``deploy/start_site.sh``) runs every
ClientApp task through :func:`run_guarded_clientapp` instead of Flower's ``run_clientapp``. The
task is split over two processes:

1. the **site process** (site code only) talks to the SuperNode's Runtime API: it pulls the
   instruction, the context and the FAB, checks the FAB's signature against the site's trusted
   entities (:func:`verify_fab_signature`, when the site gave ``--trusted-entities``), and is
   the only process that pushes a reply;
2. the **app process**, forked from it before any project module is imported, installs the FAB,
   loads its ClientApp and runs it on the instruction. It hands back the reply content and the
   context state over a pipe as Flower protobuf bytes (parsed, never unpickled).

The site process then decodes every array and checks the reply against the rules it derives
itself (:func:`site_rules_for`): the skill layout its *own* model defines for the task in its
own ``site.json`` (the run config only chooses the architecture), the metric allow-list, the
reply schema per message type, the site's name and task spec. A reply that fails, an app that
raises, or an unsigned app becomes an error reply with a fixed reason code
(:class:`~unicon_core.federation.egress.RefusalCode`); the details go to this site's log only.

Node config keys read here (``--node-config``): ``site-dir`` (required), ``site-name``,
``router-min-count``, ``egress-extra-metrics`` (comma-separated metric names to allow) and
``egress-max-metrics``. The run config contributes only ``fab-signature`` (checked against the
site's own trusted keys) and the architecture the skill layout is built for.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import struct
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from logging import ERROR
from pathlib import Path
from typing import Any

#: Run-config key carrying the consortium's signature of the FAB (``deploy/sign_fab.py``).
SIGNATURE_KEY = "fab-signature"
#: Node-config keys of the site's egress rules.
NODE_EXTRA_METRICS = "egress-extra-metrics"
NODE_MAX_METRICS = "egress-max-metrics"
#: Most bytes the app process may hand back for one reply (4 GiB).
MAX_HANDBACK_BYTES = 1 << 32


class SiteGuardError(ValueError):
    """The site's own configuration (trusted entities, node config, site.json) is unusable."""


# ------------------------------------------------------------------------------ signed apps
def load_trusted_entities(path: Path | str) -> dict[str, str]:
    """``{public key id: 'ssh-ed25519 ...'}`` from the YAML file Flower's
    ``flower-supernode --trusted-entities`` reads; every key must be Ed25519."""
    import yaml
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise SiteGuardError(f"trusted entities {path}: cannot be read ({err})") from None
    if not isinstance(data, dict) or not data:
        raise SiteGuardError(f"trusted entities {path}: expected a mapping 'key-id: ssh-ed25519 "
                             "AAAA...', got " + type(data).__name__)
    out: dict[str, str] = {}
    for key_id, text in data.items():
        try:
            key = load_ssh_public_key(str(text).encode())
        except (ValueError, TypeError) as err:
            raise SiteGuardError(f"trusted entities {path}: key {key_id!r} is not an OpenSSH "
                                 f"public key ({err})") from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise SiteGuardError(f"trusted entities {path}: key {key_id!r} is not Ed25519 "
                                 "(ssh-keygen -t ed25519)")
        out[str(key_id)] = str(text)
    return out


def sign_fab(fab: bytes, private_key: Any, key_id: str, signed_at: int | None = None) -> str:
    """The ``fab-signature`` value for ``fab``: ``<key id>:<signed at>:<base64url signature>``.

    The signed message is Flower's (``create_message_to_sign``): the signing time as 8 bytes
    big-endian followed by the FAB's SHA-256, signed with Ed25519, as ``flwr app review`` does.
    """
    from flwr.supercore.primitives.asymmetric_ed25519 import create_message_to_sign

    if not key_id or ":" in key_id:
        raise ValueError(f"key id must be non-empty and without ':', got {key_id!r}")
    when = int(time.time()) if signed_at is None else int(signed_at)
    message = create_message_to_sign(hashlib.sha256(fab).digest(), when)
    signature = base64.urlsafe_b64encode(private_key.sign(message)).rstrip(b"=").decode()
    return f"{key_id}:{when}:{signature}"


def verify_fab_signature(fab: bytes, signature: str, trusted: Mapping[str, str]) -> str:
    """'' when ``signature`` is a trusted entity's signature of exactly ``fab``, else why not.

    The check is Flower's (``flwr.supernode.start_client_internal._verify_fab``), fed from the
    run config instead of the Flower Hub's verification records, which a FAB submitted with
    ``flwr run`` never has.
    """
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key
    from flwr.supercore.primitives.asymmetric_ed25519 import (
        create_message_to_sign,
        decode_base64url,
        verify_signature,
    )

    if not signature:
        return f"the run config has no {SIGNATURE_KEY!r}: the app is not signed"
    parts = str(signature).split(":")
    if len(parts) != 3 or not parts[1].isdigit():
        return f"{SIGNATURE_KEY!r} is not '<key id>:<signed at>:<signature>'"
    key_id, signed_at, sig = parts
    if key_id not in trusted:
        return f"the app is signed by {key_id[:64]!r}, which this site does not trust"
    try:
        raw = decode_base64url(sig)
    except ValueError:
        return f"{SIGNATURE_KEY!r} holds no base64url signature"
    key = load_ssh_public_key(trusted[key_id].encode())
    message = create_message_to_sign(hashlib.sha256(fab).digest(), int(signed_at))
    if not verify_signature(key, message, raw):  # type: ignore[arg-type]
        return (f"the signature of {key_id!r} does not match this FAB (sha256 "
                f"{hashlib.sha256(fab).hexdigest()[:16]}...): the app was changed or signed "
                "for other bytes")
    return ""


# ------------------------------------------------------------------------------ site rules
def site_layout(node_config: Mapping[str, Any], run_config: Mapping[str, Any]
                ) -> tuple[dict[str, tuple[int, ...]], Any]:
    """(key -> shape, ``site.json`` metadata): the skill layout the site's own model defines
    for the task in its own ``site.json``; the run config chooses only the architecture. A site
    whose node config allows research plans (issue #16) gets the run's plan's tensors instead."""
    from unicon_core.data.manifest import read_site_json
    from unicon_core.federation.config import (
        NODE_SITE_DIR,
        overrides_from_run_config,
        research_allowed,
    )
    from unicon_core.hydra_config import load_settings
    from unicon_core.model import UniconModel

    if NODE_SITE_DIR not in node_config:
        raise SiteGuardError(f"node config has no {NODE_SITE_DIR!r}: the site guard needs the "
                             "site folder")
    site_dir = Path(str(node_config[NODE_SITE_DIR]))
    try:
        metadata = read_site_json(site_dir)
    except (OSError, ValueError) as err:
        raise SiteGuardError(f"{site_dir}/site.json: {err}") from None
    settings = load_settings(overrides_from_run_config(run_config))
    plan = settings.federation.plan if research_allowed(node_config) else "skill"

    def build() -> dict[str, tuple[int, ...]]:
        from unicon_core.training.plans import plan_parameters

        model = UniconModel(settings.backbone, seed=settings.seed)
        model.add_task(metadata.task)
        return {k: tuple(int(s) for s in p.shape)
                for k, p in plan_parameters(model, metadata.task.name, plan).items()}

    import torch

    try:  # shapes only: on the meta device no weights are allocated (a 117M foundation)
        with torch.device("meta"):
            return build(), metadata
    except Exception:  # a backbone that cannot be built without data: build it for real
        return build(), metadata


def site_rules_for(node_config: Mapping[str, Any], run_config: Mapping[str, Any]) -> Any:
    """The site's :class:`~unicon_core.federation.egress.EgressRules` (see module doc)."""
    from dataclasses import replace

    from unicon_core.federation.config import (
        NODE_ROUTER_MIN_COUNT,
        NODE_SITE_DIR,
        NODE_SITE_NAME,
        ROUTER_MIN_COUNT,
        research_allowed,
    )
    from unicon_core.federation.egress import site_rules

    layout, metadata = site_layout(node_config, run_config)
    # Replies name the site as its site.json does; a site that cannot open its folder names
    # itself as the node config does (site-name, else the folder's name).
    node_name = str(node_config.get(NODE_SITE_NAME) or Path(str(node_config[NODE_SITE_DIR])).name)
    names = {metadata.site, node_name}
    extra = {m.strip() for m in str(node_config.get(NODE_EXTRA_METRICS, "")).split(",")}
    try:
        max_metrics = int(node_config.get(NODE_MAX_METRICS, 32))
        min_count = int(node_config.get(NODE_ROUTER_MIN_COUNT, ROUTER_MIN_COUNT))
        rules = site_rules(layout, site_names=frozenset(names),
                           task_spec=metadata.task.to_dict(),
                           extra_metrics=frozenset(extra - {""}), max_metrics=max_metrics,
                           min_summary_count=min_count)
    except ValueError as err:
        raise SiteGuardError(f"node config: {err}") from None
    if not research_allowed(node_config):
        return rules
    from unicon_core.training.plans import RESEARCH_PREFIXES

    # A research plan's schedule sends part of its tensors in some rounds: any subset leaves.
    return replace(rules, prefixes=rules.prefixes + RESEARCH_PREFIXES, exact=False)


# ------------------------------------------------------------------------------ the check
def refusal(instruction: Any, code: Any) -> Any:
    """An error reply to ``instruction`` whose reason is only the fixed ``code``."""
    from flwr.app import Error, Message
    from flwr.common.constant import ErrorCode

    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=code.value),
                   reply_to=instruction)


def guarded_reply(instruction: Any, outcome: AppOutcome, rules: Any,
                  log: Callable[..., None]) -> Any:
    """The reply that may leave: the app's own if every check passes, else a refusal.

    Error replies of the app are never forwarded: their text (exception messages, ids, paths)
    goes to ``log`` and the reply carries :attr:`RefusalCode.APP_ERROR` only.
    """
    from flwr.app import Message

    from client.mods.egress_guard import reply_view  # the site's installed copy
    from unicon_core.federation.egress import RefusalCode, for_instruction, reply_problems
    from unicon_core.federation.protocol import RecordKey

    if outcome.content is None:
        log(ERROR, "site guard: the app failed, its error stays here: %s", outcome.error[:4000])
        return refusal(instruction, RefusalCode.APP_ERROR)
    message_type = instruction.metadata.message_type
    config = instruction.content.config_records.get(RecordKey.CONFIG.value, {})
    problems = reply_problems(message_type, reply_view(outcome.content),
                              for_instruction(rules, config))
    if problems:
        log(ERROR, "site guard refused a %s reply: %s", message_type, "; ".join(problems)[:8000])
        return refusal(instruction, RefusalCode.EGRESS)
    return Message(outcome.content, reply_to=instruction)


# ------------------------------------------------------------------------------ isolation
@dataclass
class AppOutcome:
    """What the app process handed back: reply content (None: it failed) and context state."""

    content: Any = None
    state: Any = None
    error: str = ""


def _write_frames(fd: int, *frames: bytes) -> None:
    with os.fdopen(fd, "wb") as out:
        for frame in frames:
            out.write(struct.pack(">Q", len(frame)))
            out.write(frame)


def run_isolated(run_app: Callable[[Any, Any], Any], message: Any, context: Any,
                 after_fork: Callable[[], None] | None = None) -> AppOutcome:
    """Run ``run_app(message, context)`` in a forked child; its reply as an :class:`AppOutcome`.

    The child hands back protobuf bytes (``RecordDict`` of the reply, ``RecordDict`` of the
    context state) or the text of its error; nothing it sends is unpickled. ``after_fork`` runs
    in the parent right after the fork, while the child works (e.g. building the site's rules).
    """
    from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

    read_fd, write_fd = os.pipe()
    site_pid = os.getpid()
    pid = os.fork()
    if pid == 0:  # the app process: never returns
        os.close(read_fd)
        code = 0
        try:
            # The site process's handlers would talk to the Runtime API: not from here.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            from flwr.supercore.app_utils import start_parent_process_monitor

            start_parent_process_monitor(site_pid)  # end with the site process
            reply = run_app(message, context)
            if reply.has_error():
                frames = (b"E", f"error reply {reply.error.code}: {reply.error.reason}".encode())
            else:
                frames = (b"R", recorddict_to_proto(reply.content).SerializeToString(),
                          recorddict_to_proto(context.state).SerializeToString())
        except BaseException:
            frames, code = (b"E", traceback.format_exc().encode(errors="replace")), 1
        try:
            _write_frames(write_fd, *frames)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(write_fd)
    outcome = AppOutcome()
    try:
        if after_fork is not None:
            after_fork()
    except BaseException:
        os.close(read_fd)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise
    try:
        frames = _read_all(read_fd)
        if frames and frames[0] == b"R" and len(frames) == 3:
            content = ProtoRecordDict()
            content.ParseFromString(frames[1])
            state = ProtoRecordDict()
            state.ParseFromString(frames[2])
            outcome = AppOutcome(recorddict_from_proto(content), recorddict_from_proto(state))
        elif frames and frames[0] == b"E" and len(frames) == 2:
            outcome = AppOutcome(error=frames[1].decode(errors="replace"))
        else:
            outcome = AppOutcome()
    except Exception as err:
        outcome = AppOutcome(error=f"unreadable hand-back: {type(err).__name__}: {err}")
    finally:
        _, status = os.waitpid(pid, 0)
    if outcome.content is None and not outcome.error:
        outcome.error = f"the app process handed back no reply (exit status {status})"
    return outcome


def _read_all(fd: int) -> list[bytes]:
    """Every length-prefixed frame until the writer closes the pipe."""
    frames: list[bytes] = []
    with os.fdopen(fd, "rb") as src:
        total = 0
        while head := src.read(8):
            if len(head) != 8:
                raise EOFError("the app process ended in the middle of a frame header")
            (size,) = struct.unpack(">Q", head)
            total += size
            if total > MAX_HANDBACK_BYTES:
                raise ValueError(f"the app process hands back more than {MAX_HANDBACK_BYTES} "
                                 "bytes")
            frame = src.read(size)
            if len(frame) != size:
                raise EOFError("the app process ended in the middle of its reply")
            frames.append(frame)
            if len(frames) > 3:
                raise ValueError("the app process hands back more than 3 frames")
    return frames


# ------------------------------------------------------------------------------ the task
def load_and_run_fab(run: Any, fab: Any) -> Callable[[Any, Any], Any]:
    """``run_app`` for :func:`run_isolated`: install the FAB, load its ClientApp, call it
    (what Flower's ``run_clientapp`` does, in the app process)."""

    def run_app(message: Any, context: Any) -> Any:
        from flwr.cli.install import install_from_fab
        from flwr.clientapp.utils import get_load_client_app_fn

        install_from_fab(fab.content, skip_prompt=True)
        load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
        client_app = load(run.fab_id, run.fab_version, fab.hash_str)
        return client_app(message=message, context=context)

    return run_app


def run_guarded_clientapp(
    runtime_api_address: str,
    token: str,
    insecure: bool,
    certificates: bytes | None = None,
    parent_pid: int | None = None,
    trusted_entities: Mapping[str, str] | None = None,
) -> None:
    """One ClientApp task, as Flower's ``run_clientapp`` runs it, with the site's checks.

    The Runtime API calls, heartbeat, signal handling and exit codes are Flower's (same
    functions); what differs is that the app runs in a forked process (:func:`run_isolated`),
    the FAB must carry a trusted signature when ``trusted_entities`` is given, and only
    :func:`guarded_reply` decides the reply that is pushed. Ends the process (``flwr_exit``).
    """
    from flwr.common.constant import SubStatus
    from flwr.supercore import log
    from flwr.supercore.app_utils import start_parent_process_monitor
    from flwr.supercore.exit import ExitCode, flwr_exit, register_signal_handlers
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supercore.runtime.tracing import RuntimeTracingInterceptor
    from flwr.supercore.telemetry import EventType
    from flwr.supernode.runtime import run_clientapp as flower

    if parent_pid is not None:
        start_parent_process_monitor(parent_pid)
    retry_invoker = make_simple_http_retry_invoker()
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address, insecure=insecure, root_certificates=certificates,
        interceptors=[RuntimeTracingInterceptor(),
                      RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                      RuntimeTokenHttpInterceptor(token)],
        retry_invoker=retry_invoker,
    )
    heartbeat: Any = None
    message: Any = None
    reply: Any = None
    context: Any = None
    sub_status, details, exit_code = SubStatus.FAILED, "site guard: task failed", ExitCode.SUCCESS

    def on_exit() -> None:
        retry_invoker.max_tries = 1
        flower.push_task_output(client=client, context=context, sub_status=sub_status,
                                details=details)
        if heartbeat is not None and heartbeat.is_running:
            heartbeat.stop()
        client.close()

    register_signal_handlers(event_type=EventType.FLWR_CLIENTAPP_RUN_LEAVE,
                             exit_message="Task stopped.", exit_handlers=[on_exit])
    try:
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        heartbeat.start()
        message, context, run, fab = flower.pull_task_input(client)
        why = ("" if trusted_entities is None else verify_fab_signature(
            fab.content, str(context.run_config.get(SIGNATURE_KEY, "")), trusted_entities))
        if why:
            from unicon_core.federation.egress import RefusalCode

            log(ERROR, "site guard: refusing run %s, FAB %s...: %s", run.run_id,
                fab.hash_str[:16], why)
            reply = refusal(message, RefusalCode.UNSIGNED_APP)
            details = RefusalCode.UNSIGNED_APP.value
        else:
            # The app process forks first, so it imports the project from the FAB only; then
            # this process builds its rules from the site's installed code, meanwhile.
            built: dict[str, Any] = {}
            outcome = run_isolated(
                load_and_run_fab(run, fab), message, context,
                after_fork=lambda: built.update(rules=_rules_or_error(context)))
            if outcome.state is not None:
                context.state = outcome.state  # the app's own memory across rounds, site-local
            rules = built["rules"]
            if isinstance(rules, str):
                from unicon_core.federation.egress import RefusalCode

                log(ERROR, "site guard: no rules, nothing leaves: %s", rules)
                reply = refusal(message, RefusalCode.EGRESS)
            else:
                reply = guarded_reply(message, outcome, rules, log)
            details = reply.error.reason if reply.has_error() else ""
        sub_status = SubStatus.COMPLETED
    except Exception as ex:  # a failure here is the site's: log it, send the fixed code only
        from unicon_core.federation.egress import RefusalCode

        log(ERROR, "site guard: the task failed", exc_info=ex)
        reply = refusal(message, RefusalCode.APP_ERROR) if message is not None else None
        details = RefusalCode.APP_ERROR.value
        exit_code = ExitCode.TASK_PROC_EXCEPTION
    finally:
        if reply is not None and context is not None:
            try:
                flower.push_message(client, reply, context)
            except Exception as ex:
                log(ERROR, "Failed to push reply message", exc_info=ex)
                exit_code = ExitCode.CLIENTAPP_COMMUNICATION_ERROR
    flwr_exit(code=exit_code, event_type=EventType.FLWR_CLIENTAPP_RUN_LEAVE)


def _rules_or_error(context: Any) -> Any:
    """The site's rules for this run, or the text of why they cannot be built."""
    try:
        return site_rules_for(context.node_config, context.run_config)
    except Exception as err:
        return f"{type(err).__name__}: {err}"
