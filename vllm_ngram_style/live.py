"""Live styles: add, replace or remove styles on a running server, without a restart.

``vllm-ngram-style serve --style-config FILE`` makes FILE live: edit it (ideally write a new file and
rename it over the old one) and, within about a second of polling plus the time to load the new
packs, the server serves the new configuration. Pack files named in it are watched too, so
rebuilding a pack in place replaces that style.

What happens, and where:
- a background thread of the engine polls FILE and the pack files once a second (a few stat calls);
  on a change it re-resolves the configuration exactly as ``serve`` did, loads and fully validates
  every new or changed pack, checks it against the served tokenizer (fingerprinted once at start)
  and builds a complete new SteeringCore (compiled variants and the op's tables), off the decoding
  loop. A bad update (unreadable JSON, a missing, corrupt or mismatched pack, an unknown mode) is
  refused with one log line naming the problem, and the old configuration keeps serving.
- the adapters take the new core at the next step boundary (V1: update_state; V2: add_request /
  apply_staged_writes), remapping the variant ids of the requests in flight: a request keeps the
  tables it was added with until it finishes. A replaced or removed style's old tables stay in the
  core, under an internal name, while a running request uses them, and are dropped by a later
  rebuild once none does.
- then the engine rewrites the resolved configuration file that vLLM's API process validates
  against (NGRAM_STYLE_CONFIG, written by ``serve``): from then on new requests for an added style
  are accepted and requests for a removed one get HTTP 400. A request validated just before a
  removal was published still gets the old tables (the name stays resolvable for GRACE_S seconds).

Live updates need one processor per server: with tensor or pipeline parallelism (a processor per
rank) they are off, with a warning.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import threading
import time
from typing import Mapping

from .config import DRAINING_KEY, SECTION, StyleConfig, read_config
from .errors import NgramStyleError

logger = logging.getLogger(__name__)

POLL_S = 1.0  # how often the thread stats the watched files (NGRAM_STYLE_LIVE_POLL_S overrides it)
GRACE_S = 30.0  # a removed style's name stays resolvable this long for requests validated before
LIVE_KEY = "live"  # the resolved configuration file's entry saying how to re-resolve it
_RETIRED = "@"  # internal names of retired tables: "name@generation" ('@' is not allowed in style names)


@dataclasses.dataclass
class Swap:
    """A new configuration, built and ready for the adapters to take at a step boundary."""

    core: object  # SteeringCore
    cfg: StyleConfig  # what the engine accepts: the configured styles plus removed ones in their grace time
    remap: list  # [old variant id] -> new variant id (-1: gone; never referenced by a running request)
    public: StyleConfig  # what new requests may name (published to the API process)
    summary: str
    draining: dict = dataclasses.field(default_factory=dict)  # removed name -> monotonic end of its grace


def live_spec(config_path: str | None) -> tuple[Mapping | None, str | None]:
    """(how to re-resolve the configuration, the file to publish it to), from the resolved
    configuration file ``serve`` wrote; (None, None) when it asks for no live updates."""
    if not config_path or not os.path.isfile(config_path):
        return None, None
    try:
        with open(config_path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None, None  # read_config reports the precise error when the engine reads it
    spec = data.get(LIVE_KEY) if isinstance(data, Mapping) else None
    return (spec, config_path) if isinstance(spec, Mapping) else (None, None)


def write_resolved(path: str, cfg: StyleConfig, spec: Mapping | None, draining: Mapping | None = None) -> None:
    """Write a resolved configuration file atomically (a reader never sees half a file). draining:
    {removed style name: wall-clock end of its grace time}. The HTTP middleware refuses those names
    (new requests get 400), but validate_params accepts them: a request the middleware let through
    just before the removal was published is validated again by vLLM moments later, and must not
    fail inside its stream (the engine still serves the name from retired tables)."""
    data = {SECTION: {"styles": cfg.styles, "modes": list(cfg.modes)}}
    if spec is not None:
        data[LIVE_KEY] = dict(spec)
    if draining:
        data[DRAINING_KEY] = {n: round(float(t), 3) for n, t in sorted(draining.items())}
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def _poll_interval() -> float:
    from .settings import getenv

    raw = getenv("LIVE_POLL_S")
    try:
        value = float(raw) if raw else POLL_S
    except ValueError:
        value = POLL_S
    return min(max(value, 0.05), 60.0)


def _stamp(path: str):
    try:
        st = os.stat(path)
        return st.st_mtime_ns, st.st_size
    except OSError:
        return None


class LiveStyles:
    """The engine side of live style updates (module docstring): one per processor."""

    def __init__(self, spec: Mapping, publish_path: str, cfg: StyleConfig, packs: dict, tokenizer: tuple,
                 core, device, backend: str | None = None, poll_s: float | None = None, start: bool = True):
        self.spec = dict(spec)
        self.publish_path = publish_path
        self.tokenizer = tokenizer  # (fingerprint, vocabulary size) of the served tokenizer
        self.device, self.backend = device, backend
        self.poll_s = poll_s if poll_s is not None else _poll_interval()
        self.public = cfg
        # key -> (StylePack, stamp of its file, path); keys are public names or retired "name@g"
        self._packs = {name: (packs[name], _stamp(cfg.styles[name]), cfg.styles[name]) for name in cfg.names}
        self._compiled = {(v.name, v.mode): v for v in core.variants}
        self._variants = [(v.name, v.mode) for v in core.variants]  # the active core's variant keys, by id
        self._removed: dict[str, tuple[str, float]] = {}  # removed public name -> (retired key, removal time)
        self._generation = 0
        self._refs: set | None = None  # variant keys running requests use, as last reported
        self._seen = self._watch_stamps()
        self._lock = threading.Lock()
        self._pending: Swap | None = None
        self._wake = threading.Event()
        self._stop = False
        self.updates = 0  # swaps taken (tests and benchmarks read it)
        self._thread = threading.Thread(target=self._run, name="ngram-style-live", daemon=True)
        if start:
            self._thread.start()

    # ---- called by the adapters at step boundaries (the decoding thread) -----------------------------

    @property
    def wants_references(self) -> bool:
        """Whether the adapter should report which variant ids its running requests use (only while
        retired tables exist, so they can be dropped)."""
        return any(_RETIRED in k for k, _ in self._variants)

    def report_references(self, variant_ids) -> None:
        self._refs = {self._variants[i] for i in variant_ids if 0 <= i < len(self._variants)}
        if self._refs.isdisjoint(k for k in self._variants if _RETIRED in k[0]) or self._grace_ended():
            self._wake.set()  # retired tables unused (or a grace time over): rebuild without them

    def take(self) -> Swap | None:
        """The next configuration, when one is built; the caller switches to swap.core now and
        remaps its running requests' variant ids with swap.remap."""
        if self._pending is None:
            return None
        with self._lock:
            swap, self._pending = self._pending, None
        if swap is None:
            return None
        self._variants = [(v.name, v.mode) for v in swap.core.variants]
        self.public = swap.public
        self.updates += 1
        try:
            now_wall, now = time.time(), time.monotonic()
            draining = {n: now_wall + (end - now) for n, end in swap.draining.items() if end > now}
            write_resolved(self.publish_path, swap.public, self.spec, draining)  # the API process validates against this
        except OSError as exc:
            logger.error("vllm-ngram-style: could not publish the style update to %s: %s", self.publish_path, exc)
        logger.info("vllm-ngram-style: %s", swap.summary)
        return swap

    def close(self) -> None:
        self._stop = True
        self._wake.set()

    # ---- the background thread -------------------------------------------------------------------------

    def _watch_stamps(self) -> dict:
        paths = [self.spec.get("config_file")] + [p for _, _, p in self._packs.values()]
        return {p: _stamp(p) for p in paths if p}

    def _grace_ended(self) -> bool:
        now = time.monotonic()
        return any(now - t > GRACE_S for _, t in self._removed.values())

    def _run(self) -> None:
        try:  # Linux threads have their own nice value: builds yield the cores to the decoding thread
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        while not self._stop:
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if self._stop:
                return
            try:
                self.poll_once()
            except Exception:  # never let the watcher die: log and keep serving what is active
                logger.exception("vllm-ngram-style: the style watcher failed; still serving %s",
                                 ", ".join(self.public.names))

    def poll_once(self) -> bool:
        """Check the watched files; build a new configuration when they changed or retired tables can
        go. -> whether a new configuration is pending. (Runs in the thread; tests call it directly.)"""
        stamps = self._watch_stamps()
        changed = stamps != self._seen
        cleanup = self._retired_droppable()
        if (not changed and not cleanup) or self._pending is not None:
            return False  # (a built configuration not taken yet: the next build must start from it)
        self._seen = stamps
        try:
            swap = self._build() if changed else self._build(self.public)
        except NgramStyleError as exc:
            logger.error("vllm-ngram-style: style update refused (%s); still serving: %s", exc,
                         ", ".join(self.public.names))
            return False
        if swap is not None:
            with self._lock:
                self._pending = swap
        return swap is not None

    def _retired_droppable(self) -> bool:
        retired = {k for k in self._variants if _RETIRED in k[0]}
        if not retired or self._refs is None:
            return False
        return retired.isdisjoint(self._refs) or self._grace_ended()

    def _resolve(self) -> StyleConfig:
        spec = {k: v for k, v in self.spec.items() if k in ("styles", "modes", "config_file")}
        cfg = read_config({SECTION: spec}, environ={})
        if cfg is None:
            raise NgramStyleError("the configuration names no styles")
        return cfg

    def _build(self, cfg: StyleConfig | None = None) -> Swap | None:
        from .styles import load_one_pack
        from .modes import available_modes
        from .steering_core import SteeringCore

        cfg = cfg or self._resolve()
        unknown = [m for m in cfg.modes if m not in available_modes()]
        if unknown:
            raise NgramStyleError(f"unknown mode {unknown[0]!r}")
        now = time.monotonic()
        table, moved, added, replaced = {}, {}, [], []  # moved: old key -> its key in the new core
        for name in cfg.names:  # new or changed packs first: a bad one refuses the whole update
            path, stamp, old = cfg.styles[name], _stamp(cfg.styles[name]), self._packs.get(name)
            if old is not None and old[2] == path and old[1] == stamp:
                table[name], moved[name] = old, name
                continue
            table[name] = (load_one_pack(name, path, self.tokenizer), stamp, path)
            (replaced if old is not None else added).append(name)
        removed = [n for n in self._packs if _RETIRED not in n and n not in cfg.names]
        # Tables to keep under an internal name: a replaced or removed style's while a running request
        # may use them (a style just replaced counts as used: no report has seen the swap yet), and a
        # removed name's for GRACE_S, for requests validated before the removal was published.
        refs = self._refs or set()
        grace = {n: t for n, (_, t) in self._removed.items() if now - t <= GRACE_S and n not in cfg.names}
        grace.update({n: now for n in removed})
        generation = self._generation + 1
        aliases = {}
        for key, entry in self._packs.items():
            if key in moved:
                continue
            public = key.split(_RETIRED)[0]
            used = any(k == key for k, _ in refs) or key in removed or key in replaced
            if used or public in grace:
                new_key = key if _RETIRED in key else f"{public}{_RETIRED}{generation}"
                table[new_key], moved[key] = entry, new_key
                if public in grace and public not in cfg.names:
                    aliases[public] = new_key
        retired_before = {k for k in self._packs if _RETIRED in k}
        retired_now = {k for k in table if _RETIRED in k}
        if not (added or replaced or removed) and retired_now == retired_before and cfg.modes == self.public.modes \
                and aliases == {n: k for n, (k, _) in self._removed.items() if n in grace}:
            return None  # a touched file with the same contents, nothing to drop
        compiled = {}
        for old_key, new_key in moved.items():  # unchanged tables are not compiled again
            for mode in cfg.modes:
                c = self._compiled.get((old_key, mode))
                if c is not None:
                    compiled[(new_key, mode)] = c if c.name == new_key else dataclasses.replace(c, name=new_key)
        core = SteeringCore({k: v[0] for k, v in table.items()}, cfg.modes, self.device, self.backend,
                            compiled=compiled, aliases=aliases)
        remap = []
        for key, mode in self._variants:
            new_key = moved.get(key)
            remap.append(core.variant_id(new_key, mode) if new_key is not None and mode in cfg.modes else -1)
        self._generation = generation
        self._packs = table
        self._compiled = {(v.name, v.mode): v for v in core.variants}
        self._removed = {n: (aliases[n], grace[n]) for n in aliases}
        public = StyleConfig({n: cfg.styles[n] for n in cfg.names}, cfg.modes)
        engine_cfg = StyleConfig({**public.styles, **{n: table[k][2] for n, k in aliases.items()}}, cfg.modes)
        parts = [f"{what} {', '.join(names)}" for what, names in (("added", added), ("replaced", replaced),
                                                                   ("removed", removed)) if names]
        kept = len(retired_now)
        summary = ("styles updated: " + "; ".join(parts) if parts else "retired style tables dropped") + \
            f"; now serving: {', '.join(public.names)}" + \
            (f" (running or just-validated requests keep {kept} retired style table(s))" if kept else "")
        draining = {n: t + GRACE_S for n, (_, t) in self._removed.items()}  # monotonic ends of the grace times
        return Swap(core, engine_cfg, remap, public, summary, draining)
