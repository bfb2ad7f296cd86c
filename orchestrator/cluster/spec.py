"""Cluster files: which Ray cluster an experiment goes to, what its nodes hold, how to reach it.

A cluster file is Ray's own format, checked by Ray's own code, so that what passes here passes
`ray up` (or `kubectl apply`) too:

- Ray cluster-launcher YAML (`cluster_name`, `provider`, `available_node_types`, ...): prepared
  and validated with `ray.autoscaler._private.util.prepare_config` + `validate_config`, exactly
  what `ray up` runs (JSON schema `ray/autoscaler/ray-schema.json`, then its cross-field rules).
- A KubeRay `RayCluster` custom resource: turned into the same autoscaler config by the function
  the KubeRay autoscaler itself uses (`_derive_autoscaling_config_from_ray_cr`), which validates it.

The orchestrator's own fields (Jobs API address, where the token comes from, where results go)
must not break either format. Ray's schema forbids unknown top-level keys but reserves one for
this: `metadata` ("user-defined data ... Ray does not interpret these fields"), so a launcher
file carries them under `metadata.hpo`. kubectl rejects unknown fields in a RayCluster, so there
they are the same mapping, as YAML text in the annotation `hpo-orchestrator/config`.

`check_capacity` is the pre-flight: a per-trial request no node type can hold is refused here,
naming every node type and its capacity; bare Ray would queue the trial forever.
"""

from __future__ import annotations

import copy
import ipaddress
import math
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from orchestrator.base import StrictModel, error_path
from orchestrator.errors import HpoError, Problem, SpecError

KUBERAY_ANNOTATION = "hpo-orchestrator/config"
_URI = re.compile(r"^[a-z][a-z0-9+.-]*://")


class ClusterConfigError(SpecError):
    """The cluster file is invalid; nothing was started or submitted."""

    def __str__(self) -> str:
        head = f"invalid cluster file {self.source}" if self.source else "invalid cluster file"
        return head + ":\n" + "\n".join(f"  {p}" for p in self.problems)


class ClusterError(HpoError):
    """The cluster could not be reached, started or stopped, or a job could not be handled."""


# --- the orchestrator's section -------------------------------------------------------------

class TokenSource(StrictModel):
    """Where the Ray auth token is read from on the submitting machine. Exactly one of the two."""

    token_file: str | None = Field(None, description="a file holding only the token (kept mode 0600)")
    token_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                  description="an environment variable holding the token")

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.token_file is None) == (self.token_env is None):
            raise ValueError("give exactly one of token_file or token_env")
        return self

    def path(self) -> Path | None:
        return Path(os.path.expanduser(self.token_file)) if self.token_file else None


class RuntimeEnvOptions(StrictModel):
    """What a submission carries beyond the working directory."""

    pip: str | None = Field(None, description="pinned requirements file (relative to this cluster file), "
                                              "installed on the cluster per job; the `ray` pin is dropped")
    excludes: list[str] = Field(default_factory=list, description="more upload excludes (gitignore syntax)")


class LocalNodes(StrictModel):
    """How `hpo cluster up` runs the nodes on this machine (only for local clusters)."""

    gcs_port: int = Field(6380, ge=1024, le=65535, description="the head's GCS port (Ray's default is 6379)")
    dashboard_host: str = Field("127.0.0.1", description="where the dashboard/Jobs API binds; anything "
                                                         "but loopback exposes it (token auth stays on)")
    temp_dir: str | None = Field(None, description="Ray's temp/log dirs, one folder per node (default "
                                                   "/tmp/hpo-<cluster_name>); keep it short: Ray's socket "
                                                   "paths under it are limited to 107 bytes")
    state_dir: str | None = Field(None, description="pids and node logs (default ~/.hpo/clusters/<cluster_name>)")


class HpoSection(StrictModel):
    jobs_address: str = Field(description="the Ray Jobs API (dashboard) URL, e.g. http://127.0.0.1:8265")
    auth: TokenSource
    storage: str = Field(description="where jobs write results: an absolute path every node shares, "
                                     "or a pyarrow filesystem URI (s3://bucket/prefix, gs://...)")
    python: str = Field("python", min_length=1, description="the interpreter that runs the job's entrypoint")
    runtime_env: RuntimeEnvOptions = RuntimeEnvOptions()
    local: LocalNodes | None = None

    @field_validator("jobs_address")
    @classmethod
    def _http_url(cls, v: str) -> str:
        url = urlparse(v)
        if url.scheme not in ("http", "https") or not url.hostname or url.port is None:
            raise ValueError(f"must be http(s)://host:port, got {v!r}")
        return v.rstrip("/")

    @field_validator("storage")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not _URI.match(v) and not v.startswith("/"):
            raise ValueError(f"must be an absolute path shared by every node or a URI like s3://bucket/prefix, "
                             f"got {v!r} (a relative path would be relative to each job's working dir)")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _reachable(self):
        if self.local is not None:
            host = urlparse(self.jobs_address).hostname
            if is_loopback(self.local.dashboard_host) and not is_loopback(host):
                raise ValueError(f"local.dashboard_host {self.local.dashboard_host} only listens on loopback, so "
                                 f"jobs_address must name 127.0.0.1 too, got {self.jobs_address!r}")
        return self


def is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


# --- node types and the loaded cluster ------------------------------------------------------

@dataclass(frozen=True)
class NodeType:
    name: str
    cpu: float | None  # None: not declared, Ray detects it when the node starts
    gpu: float | None
    min_workers: int
    max_workers: int
    head: bool
    custom: Mapping[str, float]

    @property
    def most_nodes(self) -> int:
        return 1 if self.head else self.max_workers

    def describe(self) -> str:
        cpu = "CPU ?" if self.cpu is None else f"CPU {self.cpu:g}"
        gpu = "GPU ?" if self.gpu is None else f"GPU {self.gpu:g}"
        count = "head" if self.head else f"{self.min_workers}-{self.max_workers} nodes"
        return f"{self.name} ({cpu}, {gpu}; {count})"

    def slots(self, cpu: float, gpu: float) -> int | None:
        """Trials needing (cpu, gpu) that fit on one node of this type; None when unknown."""
        fits = []
        for need, have in ((cpu, self.cpu), (gpu, self.gpu)):
            if need <= 0:
                continue
            if have is None:
                return None
            fits.append(math.floor(have / need + 1e-9))
        return min(fits) if fits else None


@dataclass(frozen=True)
class Cluster:
    """A validated cluster file."""

    name: str
    source: Path
    kind: Literal["launcher", "kuberay"]
    node_types: Mapping[str, NodeType]
    head_type: str
    hpo: HpoSection

    @property
    def is_local(self) -> bool:
        return self.hpo.local is not None

    @property
    def state_dir(self) -> Path:
        where = self.hpo.local.state_dir if self.hpo.local and self.hpo.local.state_dir else \
            f"~/.hpo/clusters/{self.name}"
        return Path(os.path.expanduser(where))

    @property
    def temp_dir(self) -> Path:
        where = self.hpo.local.temp_dir if self.hpo.local and self.hpo.local.temp_dir else f"/tmp/hpo-{self.name}"
        return Path(os.path.expanduser(where))

    def token(self) -> str:
        """The token for the Jobs API. Never print, log or store it."""
        src = self.hpo.auth
        if src.token_env:
            value = os.environ.get(src.token_env, "").strip()
            if not value:
                raise ClusterError(f"{self.source}: metadata.hpo.auth.token_env names {src.token_env}, which is "
                                   f"unset or empty; export the cluster's token in it")
            return value
        path = src.path()
        try:
            value = path.read_text().strip()
        except OSError as exc:
            hint = (f"run `hpo cluster up {self.source}` (it creates the token)" if self.is_local else
                    f"save the cluster's token there (see the comments in {self.source})")
            raise ClusterError(f"cannot read the auth token file {path} ({exc.strerror}); {hint}") from None
        if not value:
            raise ClusterError(f"the auth token file {path} is empty")
        return value

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}"}


def load(path: str | Path) -> Cluster:
    """Reads and validates a cluster file (launcher YAML or KubeRay RayCluster); raises ClusterConfigError."""
    path = Path(path)
    source = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ClusterConfigError(f"cannot read cluster file: {exc.strerror}", source) from None
    except yaml.YAMLError as exc:
        raise ClusterConfigError(f"malformed YAML: {exc}", source) from None
    if not isinstance(raw, dict):
        raise ClusterConfigError("a cluster file is a YAML mapping (cluster_name:, provider:, ...)", source)
    if raw.get("kind") == "RayCluster":
        autoscaler, hpo_raw, hpo_path = _from_kuberay(raw, source)
        kind = "kuberay"
    else:
        autoscaler, hpo_raw, hpo_path = _from_launcher(raw, source), _dig(raw, "metadata", "hpo"), "metadata.hpo"
        kind = "launcher"
    hpo = _hpo_section(hpo_raw, hpo_path, source)
    node_types = _node_types(autoscaler)
    cluster = Cluster(autoscaler["cluster_name"], path, kind, node_types, autoscaler["head_node_type"], hpo)
    if hpo.local is not None and kind != "launcher":
        raise ClusterConfigError(Problem(f"{hpo_path}.local", "only a launcher-format file describes nodes "
                                                             "`hpo cluster up` can start here"), source)
    return cluster


def _dig(raw: Mapping, *keys: str) -> Any:
    for k in keys:
        if not isinstance(raw, Mapping):
            return None
        raw = raw.get(k)
    return raw


def _from_launcher(raw: dict, source: str) -> dict:
    """Ray's own checks, in `ray up`'s order: fill provider defaults, then schema + cross-field rules."""
    import jsonschema

    from orchestrator.ray_api import validate_launcher_config

    if "available_node_types" not in raw or "head_node_type" not in raw:
        raise ClusterConfigError(Problem("available_node_types", "name the node types and their resources "
                                                                 "(available_node_types + head_node_type)"), source)
    try:
        prepared = validate_launcher_config(copy.deepcopy(raw))
    except jsonschema.ValidationError as exc:
        where = ".".join(str(p) for p in exc.absolute_path)
        raise ClusterConfigError(Problem(where, f"{exc.message} (Ray's cluster schema)"), source) from None
    except (ValueError, KeyError, AssertionError, NotImplementedError) as exc:
        raise ClusterConfigError(Problem("", f"Ray rejects it: {exc}"), source) from None
    except (SystemExit, Exception) as exc:  # cli_logger.abort in Ray's provider preparation
        raise ClusterConfigError(Problem("provider", f"Ray rejects it: {type(exc).__name__}: {exc}"), source) from None
    return prepared


def _from_kuberay(raw: dict, source: str) -> tuple[dict, Any, str]:
    import jsonschema

    from orchestrator.ray_api import kuberay_autoscaling_config

    if not str(raw.get("apiVersion", "")).startswith("ray.io/"):
        raise ClusterConfigError(Problem("apiVersion", f"a RayCluster is apiVersion ray.io/v1, got "
                                                       f"{raw.get('apiVersion')!r}"), source)
    annotation = _dig(raw, "metadata", "annotations", KUBERAY_ANNOTATION)
    path = f"metadata.annotations.{KUBERAY_ANNOTATION}"
    if not isinstance(annotation, str):
        raise ClusterConfigError(Problem(path, "add the orchestrator's settings (jobs_address, auth, storage) "
                                               "as a YAML string in this annotation"), source)
    try:
        hpo_raw = yaml.safe_load(annotation)
    except yaml.YAMLError as exc:
        raise ClusterConfigError(Problem(path, f"not valid YAML: {exc}"), source) from None
    try:
        autoscaler = kuberay_autoscaling_config(copy.deepcopy(raw))
    except jsonschema.ValidationError as exc:
        where = ".".join(str(p) for p in exc.absolute_path)
        raise ClusterConfigError(Problem(where, f"{exc.message} (Ray's cluster schema, via KubeRay's "
                                                f"translation)"), source) from None
    except KeyError as exc:
        raise ClusterConfigError(Problem("", f"a RayCluster needs {exc} (metadata.namespace, spec.headGroupSpec, "
                                             f"spec.workerGroupSpecs[].groupName/minReplicas/maxReplicas)"),
                                 source) from None
    except (ValueError, TypeError, AssertionError) as exc:
        raise ClusterConfigError(Problem("spec", f"KubeRay's translation rejects it: {exc}"), source) from None
    return autoscaler, hpo_raw, path


def _hpo_section(raw: Any, path: str, source: str) -> HpoSection:
    if raw is None:
        raise ClusterConfigError(Problem(path, "missing: add jobs_address, auth and storage so hpo can reach "
                                               "the cluster (see cluster/local.yaml)"), source)
    try:
        return HpoSection.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join([path, *(str(p) for p in error_path(err))])
            msg = re.sub(r"^Value error, ", "", err["msg"])
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append(Problem(where, msg))
        raise ClusterConfigError(problems, source) from None


def _node_types(autoscaler: Mapping[str, Any]) -> dict[str, NodeType]:
    out = {}
    head = autoscaler["head_node_type"]
    for name, spec in autoscaler["available_node_types"].items():
        res = dict(spec.get("resources") or {})
        cpu, gpu = res.pop("CPU", None), res.pop("GPU", None)
        res.pop("memory", None)
        out[name] = NodeType(name, cpu, gpu, int(spec.get("min_workers", 0)), int(spec.get("max_workers", 0)),
                             name == head, {k: float(v) for k, v in res.items()})
    return out


# --- pre-flight ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Capacity:
    """How many trials of one shape the cluster can run at once, per node type (None: unknown)."""

    per_type: Mapping[str, int | None]

    @property
    def total(self) -> int | None:
        if any(v is None for v in self.per_type.values()):
            return None
        return sum(self.per_type.values())


def check_capacity(cluster: Cluster, cpu: float, gpu: float, spec_source: str | None = None) -> Capacity:
    """Refuses a per-trial request that no node type can satisfy; returns what fits where.

    A node type whose CPU/GPU are not declared (Ray detects them at launch) counts as fitting, since
    nothing here can know better; declare `resources` in the cluster file to have it checked.
    """
    per_type: dict[str, int | None] = {}
    for t in cluster.node_types.values():
        if t.most_nodes == 0:
            continue
        slots = t.slots(cpu, gpu)
        if slots is None or slots > 0:
            per_type[t.name] = None if slots is None else slots * t.most_nodes
    if not per_type:
        have = "; ".join(t.describe() for t in cluster.node_types.values())
        raise SpecError(Problem("resources", f"no node type of cluster {cluster.name} ({cluster.source}) can run "
                                             f"a trial needing cpu={cpu:g}, gpu={gpu:g}: {have}. Ray would keep "
                                             f"it pending forever; lower resources or add a node type with "
                                             f"enough"), spec_source)
    return Capacity(per_type)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (the OS picks it); used for every Ray port a local cluster needs."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
