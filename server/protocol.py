"""Wire protocol between the probe and the server (pydantic only: no torch, no FastAPI).

Every message is a JSON object with a ``type`` field. The probe sends ``snapshot`` and
``event`` messages on ``/ws/ingest``; the server answers each with an ``ack`` (stored, or
already stored) or an ``error``. A snapshot is identified by its key ``(run, step)``:
the server stores it at most once and acknowledges duplicates again, so a probe may resend
until it sees the acknowledgement.

All numbers on the wire are finite: NaN and infinity are rejected. Signal-to-noise ratios
whose variance is zero (or undefined, for a single sample) travel as the sentinel
:data:`SNR_UNDEFINED` (``-1.0``); SNRs are otherwise non-negative. See ``docs/protocol.md``.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "CLOSE_FORBIDDEN_ORIGIN",
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_NORMAL",
    "CLOSE_SLOW_CLIENT",
    "CLOSE_TRY_AGAIN_LATER",
    "CLOSE_UNAUTHORIZED",
    "CLOSE_UNSUPPORTED_DATA",
    "CLOSE_UNSUPPORTED_SCHEMA",
    "DEFAULT_BACKEND",
    "INSTANCE_PATTERN",
    "MAX_RUN_NAME_LENGTH",
    "MAX_STEP",
    "RUN_NAME_PATTERN",
    "SCHEMA_VERSION",
    "SNR_UNDEFINED",
    "AckMessage",
    "ConfigPayload",
    "CurvatureBackend",
    "ErrorMessage",
    "EventMessage",
    "GroupPayload",
    "HessianDensity",
    "IngestMessage",
    "Instance",
    "OptimizerPayload",
    "RunName",
    "SnapshotMessage",
    "parse_ingest_message",
]

SCHEMA_VERSION = 1
"""Version of the wire schema; a message with another version is refused."""

SNR_UNDEFINED = -1.0
"""SNR sentinel: the per-sample variance is zero (or undefined because N = 1)."""

CurvatureBackend = Literal["backpack", "func"]
"""The probe's curvature backends: ``backpack`` (BackPACK's backward hooks) or ``func`` (the
probe's BackPACK-free implementation)."""
DEFAULT_BACKEND: CurvatureBackend = "backpack"
"""``config.backend`` of a snapshot that does not say: probes older than the field all used
BackPACK."""

# Websocket close codes used by the server (1xxx: RFC 6455; 4xxx: curvscope's own).
# A probe should not retry on CLOSE_UNAUTHORIZED, CLOSE_FORBIDDEN_ORIGIN or
# CLOSE_UNSUPPORTED_SCHEMA (resending cannot help); it may reconnect after the others.
CLOSE_NORMAL = 1000
"""The peer closed normally."""
CLOSE_GOING_AWAY = 1001
"""The server is shutting down."""
CLOSE_UNSUPPORTED_DATA = 1003
"""A binary frame arrived; the protocol speaks JSON text frames only."""
CLOSE_MESSAGE_TOO_BIG = 1009
"""A frame was larger than the server's ``max_message_bytes``."""
CLOSE_INTERNAL_ERROR = 1011
"""The server could not store the message; nothing was acknowledged, resend later."""
CLOSE_TRY_AGAIN_LATER = 1013
"""The server has as many probe connections as it takes; reconnect later (with backoff)."""
CLOSE_UNAUTHORIZED = 4401
"""A token is required and none, or a wrong one, was presented."""
CLOSE_FORBIDDEN_ORIGIN = 4403
"""A browser connected from a foreign ``Origin`` (cross-site websocket hijacking)."""
CLOSE_SLOW_CLIENT = 4408
"""A browser client read too slowly and fell too far behind; reconnect and refetch."""
CLOSE_UNSUPPORTED_SCHEMA = 4426
"""The message's ``schema_version`` is not one the server speaks."""

MAX_RUN_NAME_LENGTH = 128
RUN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"

RunName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_RUN_NAME_LENGTH,
        pattern=RUN_NAME_PATTERN,
        description="Run name: letters, digits, '.', '_' and '-', starting with a letter or digit.",
    ),
]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
MAX_STEP = 2**62
"""The largest step a snapshot may have (fits SQLite's signed 64-bit integers)."""
Step = Annotated[int, Field(ge=0, le=MAX_STEP)]
INSTANCE_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
Instance = Annotated[
    str,
    Field(
        pattern=INSTANCE_PATTERN,
        description="The probe instance (one per Probe, a random UUID) that sent the message.",
    ),
]


class _Message(BaseModel):
    # strict: a step of "7" or true is refused, not coerced (an int may still be a float)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _Optional(_Message):
    """Fields added after the schema's first version are left out of dumps while they hold
    their defaults: a snapshot without them serialises (and is stored) as it always was, so
    a replay of it still matches the stored copy."""

    _OMITTED_AT_DEFAULT: ClassVar[dict[str, Any]] = {}

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name, default in self._OMITTED_AT_DEFAULT.items():
            if name in data and data[name] == default:
                del data[name]
        return data


class ConfigPayload(_Optional):
    """The ViViT configuration a snapshot was computed with."""

    _OMITTED_AT_DEFAULT: ClassVar[dict[str, Any]] = {
        "hessian_top_k": 0,
        "step_trust": False,
        "gradient_spectrum": False,
        "subsample_grad": None,
    }

    curvature: Literal["exact", "mc"] = "exact"
    mc_samples: int = Field(1, ge=1)
    subsample: list[int] | None = None
    param_groups: str = "all"
    top_k: int | None = Field(None, ge=1)
    directions: str | None = Field(None, max_length=256)
    """The probe's direction selection, described (``"bottom:5"``, ``"band:0.001:"``,
    ``"callable:name"``); ``None``: all, or ``top_k``."""
    eigenvectors: int = Field(0, ge=0)
    per_sample: bool = False
    hessian_top_k: int = Field(0, ge=0)
    """How many of the largest Hessian eigenvalues each group carries (``0``: no Hessian)."""
    subsample_grad: list[int] | None = None
    """The batch indices the per-sample directional gradients (``gammas``, ``snr_gamma``)
    and the gradient-noise spectrum come from; ``None``: the whole batch."""
    gradient_spectrum: bool = False
    """Whether the groups carry the gradient-noise spectrum (``gradient_eigvals``,
    ``gradient_moment_eigvals``)."""
    step_trust: bool = False
    """Whether the groups carry the step trust (``trust_damping``, ``trust_bound``,
    ``newton_reduction``)."""
    mode: Literal["in-loop", "held-out", "function"] = "function"
    backend: CurvatureBackend = DEFAULT_BACKEND
    """The curvature backend that computed the snapshot (:data:`CurvatureBackend`); absent
    from older probes' messages, which all used BackPACK."""


class HessianDensity(_Message):
    """SLQ quadrature of a group's Hessian spectral density: per probe ``m`` nodes (Ritz
    values) and their weights (non-negative, adding up to 1 per probe); the density is
    ``(1/probes) Σ_probes Σ_j w_j δ(λ - node_j)``."""

    nodes: list[list[FiniteFloat]] = Field(max_length=10_000)
    weights: list[list[Annotated[float, Field(allow_inf_nan=False, ge=0.0)]]] = Field(
        max_length=10_000
    )

    @model_validator(mode="after")
    def _check_shapes(self) -> HessianDensity:
        if [len(r) for r in self.nodes] != [len(r) for r in self.weights]:
            raise ValueError("hessian_density: nodes and weights must have equal shapes")
        return self


class GroupPayload(_Optional):
    """Per-parameter-group results, directions in descending λ.

    ``eigvals`` has K entries (the non-zero spectrum the probe kept). The per-direction
    statistics ``gamma``, ``snr_gamma``, ``snr_lambda`` and ``grad_overlap`` cover the top
    K' <= K directions (``top_k``) and all have that one length K'. ``gammas`` (N x K') and
    ``lambdas`` (N' x K') are the per-sample matrices; they are only sent when the probe was
    asked for them (``per_sample=True``).

    ``hessian_eigvals`` (the ``hessian_top_k`` largest eigenvalues of the group's Hessian,
    descending, possibly negative), ``hessian_min`` (its smallest eigenvalue) and
    ``hessian_density`` (SLQ) come with snapshots that computed the Hessian; else ``None``.
    """

    name: str = Field(min_length=1, max_length=256)
    num_params: int = Field(ge=1)
    eigvals: list[FiniteFloat]
    gamma: list[FiniteFloat]
    snr_gamma: list[FiniteFloat]
    snr_lambda: list[FiniteFloat]
    grad_overlap: list[FiniteFloat]
    grad_norm_sq: FiniteFloat = Field(ge=0.0)
    directions: list[int] | None = None
    """Indices into ``eigvals`` (ascending, distinct) of the K' directions the statistics
    are for; ``None``: the first K' (the top K')."""
    gammas: list[list[FiniteFloat]] | None = None
    lambdas: list[list[FiniteFloat]] | None = None
    hessian_eigvals: list[FiniteFloat] | None = Field(None, max_length=10_000)
    hessian_min: FiniteFloat | None = None
    hessian_density: HessianDensity | None = None
    gradient_eigvals: list[FiniteFloat] | None = Field(None, max_length=1_000_000)
    """The gradient-noise spectrum: the non-zero eigenvalues (descending, ``<= N − 1``) of
    the unbiased covariance over samples of ``N·g_n`` (``e_kᵀ C e_k`` is the variance of
    ``γ_nk`` that ``snr_gamma`` divides by)."""
    gradient_moment_eigvals: list[FiniteFloat] | None = Field(None, max_length=1_000_000)
    """The non-zero eigenvalues (descending, ``<= N``) of the uncentred second moment
    ``(1/N) Σ_n (N g_n)(N g_n)ᵀ``."""
    trust_damping: list[Annotated[float, Field(allow_inf_nan=False, gt=0.0)] | None] | None = None
    """``[K']`` the bootstrap damping δ_k per statistics direction; ``null`` where no damping
    has a non-negative bound (the damped Newton step leaves the direction alone)."""
    trust_bound: list[FiniteFloat] | None = None
    """``[K']`` the largest 5 % bootstrap quantile of the predicted loss reduction over the
    damping grid: ``>= 0`` exactly where ``trust_damping`` is a number."""
    newton_reduction: FiniteFloat | None = Field(None, ge=0.0)
    """The loss decrease the group's GGN quadratic model predicts for the damped Newton step
    with the dampings ``trust_damping``."""

    _OMITTED_AT_DEFAULT: ClassVar[dict[str, Any]] = {
        "hessian_eigvals": None,
        "hessian_min": None,
        "hessian_density": None,
        "gradient_eigvals": None,
        "gradient_moment_eigvals": None,
        "trust_damping": None,
        "trust_bound": None,
        "newton_reduction": None,
    }

    @model_validator(mode="after")
    def _check_shapes(self) -> GroupPayload:
        k = len(self.eigvals)
        k_stats = len(self.gamma)
        if k_stats > k:
            raise PydanticCustomError(
                "shape_mismatch",
                "group {name}: gamma has {got} entries, more than the K = {k} eigvals",
                {"name": self.name, "got": k_stats, "k": k},
            )
        for field in ("snr_gamma", "snr_lambda", "grad_overlap"):
            got = len(getattr(self, field))
            if got != k_stats:
                raise PydanticCustomError(
                    "shape_mismatch",
                    "group {name}: {field} has {got} entries, gamma has {k_stats}",
                    {"name": self.name, "field": field, "got": got, "k_stats": k_stats},
                )
        for field in ("gammas", "lambdas"):
            rows = getattr(self, field)
            if rows is None:
                continue
            bad = [i for i, row in enumerate(rows) if len(row) != k_stats]
            if bad:
                raise PydanticCustomError(
                    "shape_mismatch",
                    "group {name}: {field} row {row} has {got} entries, expected K' = {k_stats}",
                    {
                        "name": self.name,
                        "field": field,
                        "row": bad[0],
                        "got": len(rows[bad[0]]),
                        "k_stats": k_stats,
                    },
                )
        if self.directions is not None:
            d = self.directions
            if len(d) != k_stats:
                raise PydanticCustomError(
                    "shape_mismatch",
                    "group {name}: directions has {got} entries, gamma has {k_stats}",
                    {"name": self.name, "got": len(d), "k_stats": k_stats},
                )
            if any(i < 0 or i >= k for i in d) or any(a >= b for a, b in itertools.pairwise(d)):
                raise ValueError(
                    f"group {self.name!r}: directions must be ascending distinct indices "
                    f"into the {k} eigvals"
                )
        if any(v < 0 for v in self.eigvals):
            raise ValueError(f"group {self.name!r}: eigvals must be positive")
        h = self.hessian_eigvals
        if h is not None and any(a < b for a, b in itertools.pairwise(h)):
            raise ValueError(f"group {self.name!r}: hessian_eigvals must be descending")
        for field in ("gradient_eigvals", "gradient_moment_eigvals"):
            noise = getattr(self, field)
            if noise is None:
                continue
            if any(v < 0 for v in noise) or any(a < b for a, b in itertools.pairwise(noise)):
                raise ValueError(f"group {self.name!r}: {field} must be >= 0 and descending")
        self._check_trust(k_stats)

        for field in ("snr_gamma", "snr_lambda"):
            if any(v < 0 and v != SNR_UNDEFINED for v in getattr(self, field)):
                raise ValueError(
                    f"group {self.name!r}: {field} must be >= 0 or the sentinel {SNR_UNDEFINED}"
                )
        return self

    def _check_trust(self, k_stats: int) -> None:
        """The step-trust fields: together, with K' entries, ``null`` dampings exactly where
        the bound is negative."""
        damping, bound = self.trust_damping, self.trust_bound
        if (damping is None) != (bound is None):
            raise ValueError(f"group {self.name!r}: trust_damping and trust_bound come together")
        if damping is None or bound is None:
            return
        for field, values in (("trust_damping", damping), ("trust_bound", bound)):
            if len(values) != k_stats:
                raise PydanticCustomError(
                    "shape_mismatch",
                    "group {name}: {field} has {got} entries, gamma has {k_stats}",
                    {"name": self.name, "field": field, "got": len(values), "k_stats": k_stats},
                )
        if any((d is None) != (b < 0) for d, b in zip(damping, bound, strict=True)):
            raise ValueError(
                f"group {self.name!r}: trust_damping must be null exactly where trust_bound < 0"
            )


class OptimizerPayload(_Message):
    """The training optimizer's state at a snapshot's step (``Probe(optimizer=...)``): what
    the dashboard needs to draw the edge-of-stability threshold over the top eigenvalue.

    Read from the optimizer's first parameter group (the probe warns once when the groups'
    learning rates differ). ``lr`` is the step's learning rate η, scheduler included (``0``
    is allowed: warm-up schedules start there). ``momentum`` is the heavy-ball β of SGD
    (``0.0`` without momentum) and ``None`` for other optimizers; ``dampening`` and
    ``nesterov`` are SGD's. ``adaptive``: a preconditioned or otherwise non-SGD update (Adam,
    AdamW, RMSprop, Adagrad, ...), for which the GD threshold 2/η does not apply.
    """

    name: str = Field(min_length=1, max_length=128)
    """The optimizer's class name (``"SGD"``, ``"AdamW"``)."""
    lr: FiniteFloat = Field(ge=0.0)
    momentum: FiniteFloat | None = Field(None, ge=0.0)
    dampening: FiniteFloat = Field(0.0, ge=0.0, le=1.0)
    nesterov: bool = False
    adaptive: bool = False


class SnapshotMessage(_Optional):
    """One ViViT snapshot of one run at one step: the key is ``(run, step)``."""

    _OMITTED_AT_DEFAULT: ClassVar[dict[str, Any]] = {"optimizer": None}

    type: Literal["snapshot"] = "snapshot"
    schema_version: Literal[1] = SCHEMA_VERSION
    run: RunName
    step: Step
    user_step: Step | None = None
    """The training loop's own step number, when the probe renumbered (a restarted count)."""
    instance: Instance | None = None
    """The probe instance that computed it: a run belongs to one instance at a time (see
    ``resume``); ``None`` (older probes) claims nothing."""
    resume: bool = False
    """The instance continues the run of this name even if another instance started it
    (``Probe(resume=True)``); without it, a run owned by another instance is refused."""
    wall_time: FiniteFloat
    loss: FiniteFloat
    batch_size: int = Field(ge=1)
    config: ConfigPayload = Field(default_factory=ConfigPayload)
    groups: list[GroupPayload] = Field(max_length=10_000)
    optimizer: OptimizerPayload | None = None
    """The optimizer's learning rate and momentum at this step (``Probe(optimizer=...)``);
    ``None`` (left out of the JSON): not known."""

    @property
    def key(self) -> tuple[str, int]:
        return (self.run, self.step)


class EventMessage(_Message):
    """Something the probe wants stored next to the run (an error, a warning, a note)."""

    type: Literal["event"] = "event"
    schema_version: Literal[1] = SCHEMA_VERSION
    run: RunName
    step: Step | None = None
    instance: Instance | None = None
    """As :attr:`SnapshotMessage.instance`."""
    resume: bool = False
    """As :attr:`SnapshotMessage.resume`."""
    wall_time: FiniteFloat
    level: Literal["info", "warning", "error"] = "error"
    message: str = Field(max_length=10_000)


class AckMessage(_Message):
    """Server -> probe: the message with this key is stored (``duplicate``: it already was)."""

    type: Literal["ack"] = "ack"
    kind: Literal["snapshot", "event"] = "snapshot"
    run: str
    step: int | None = None
    duplicate: bool = False


class ErrorMessage(_Message):
    """Server -> probe: the last message was refused; ``code`` is a stable machine name."""

    type: Literal["error"] = "error"
    code: str
    message: str
    run: str | None = None
    step: int | None = None


IngestMessage = Annotated[SnapshotMessage | EventMessage, Field(discriminator="type")]
_INGEST_ADAPTER: TypeAdapter[SnapshotMessage | EventMessage] = TypeAdapter(IngestMessage)


def parse_ingest_message(data: dict[str, Any]) -> SnapshotMessage | EventMessage:
    """Validate one decoded JSON object sent by a probe.

    Raises:
        pydantic.ValidationError: the object is not a valid snapshot or event message.
    """
    return _INGEST_ADAPTER.validate_python(data)
