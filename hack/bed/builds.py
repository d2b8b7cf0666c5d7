"""Every binary the test bed runs, built from its Go module on first use and cached by version."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bed.base import HACK, TestbedError, log

KUBERNETES_VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.21.4"
KSERVE_VERSION = "v0.20.0"
GATEWAY_API_VERSION = "v1.6.3"
KSERVE_MODULE = "github.com/kserve/kserve"
KSERVE_MANAGER = "kserve-manager"
VERSITYGW_MODULE = "github.com/versity/versitygw"
VERSITYGW_VERSION = "v1.8.0"
TRAEFIK_VERSION = "v3.6.12"
TRAEFIK_MODULE = "github.com/traefik/traefik/v3"
PROMETHEUS_VERSION = "v3.16.0"
PROMETHEUS_MODULE = ("github.com/prometheus/prometheus", "v0.316.0")
"""Prometheus's Go module numbers its v3.X.Y releases v0.3XX.Y."""


def cache_dir() -> Path:
    """Where built binaries live, outside the repository, keyed by version."""
    base = os.environ.get("SLIPWAY_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "slipway"
    )
    return Path(base)


def go_env() -> dict[str, str]:
    """The environment of a Go build: static binaries, no VCS stamping."""
    env = dict(os.environ)
    env.setdefault("GOFLAGS", "-buildvcs=false")
    env["CGO_ENABLED"] = "0"
    return env


def _tree_hash(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(file.relative_to(path).as_posix().encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    """Run a build command; its stderr's tail in the error if it fails."""
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise TestbedError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    log(f"  {' '.join(cmd[:3])} … done in {time.monotonic() - started:.0f}s")


def _kube_ldflags(version: str) -> str:
    """Stamp the Kubernetes version into the binaries, as upstream's build does (helm checks it)."""
    major, minor = version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return " ".join(flags)


def _build_wrapper(name: str, version: str, module_dir: Path, target: str, ldflags: str = "-s -w") -> Path:
    out = cache_dir() / "bin" / f"{name}-{version}-{_tree_hash(module_dir)}"
    binary = out / name
    if binary.exists():
        return out
    log(f"building {name} {version} from the Go module proxy (first use; cached in {out})")
    tmp = out.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    run(
        ["go", "build", "-trimpath", f"-ldflags={ldflags}", "-o", str(tmp / name), target],
        cwd=module_dir,
        env=go_env(),
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _go_install(name: str, package: str, version: str) -> Path:
    out = cache_dir() / "bin" / f"{name}-{version}"
    if (out / name).exists():
        return out
    log(f"building {name} {version} from the Go module proxy (first use; cached in {out})")
    tmp = out.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    env = go_env()
    env["GOBIN"] = str(tmp)
    run(["go", "install", "-trimpath", "-ldflags=-s -w", f"{package}@{version}"], env=env)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def go_module_dir(module: str, version: str) -> Path:
    """Download a Go module (cached by Go) and return its directory."""
    proc = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        capture_output=True,
        text=True,
        check=False,
        env=go_env(),
        cwd=HACK / "kube",
    )
    if proc.returncode != 0:
        raise TestbedError(f"go mod download {module}@{version} failed: {proc.stdout}{proc.stderr}")
    return Path(json.loads(proc.stdout)["Dir"])


def module_binary(name: str, version: str) -> Path:
    """Where :func:`build_module_command` caches a binary: ``$SLIPWAY_CACHE_DIR/bin/<name>-<version>/<name>``."""
    return cache_dir() / "bin" / f"{name}-{version}" / name


def build_module_command(
    name: str,
    version: str,
    module: str,
    package: str,
    *,
    module_version: str = "",
    tags: str = "",
    ldflags: str = "-s -w",
    env: dict[str, str] | None = None,
) -> Path:
    """Build ``package`` of a Go module inside the module's own directory (its replaces apply); cached by version.

    The binary is :func:`module_binary`; the build runs at nice 19. ``module_version`` is the
    module's version where it differs from the release's; ``env`` adds to the build's environment.
    """
    binary = module_binary(name, version)
    if binary.exists():
        return binary
    out = binary.parent
    source = go_module_dir(module, module_version or version)
    log(f"building {name} {version} from {module} (first use, several minutes; cached in {out})")
    tmp = out.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build_env = go_env()
    build_env["GOFLAGS"] = "-mod=mod -buildvcs=false"
    build_env.update(env or {})
    cmd = ["nice", "-n", "19", "go", "build", "-trimpath", *(["-tags", tags] if tags else [])]
    cmd += [f"-ldflags={ldflags}", "-o", str(tmp / name), package]
    run(cmd, cwd=source, env=build_env)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return binary


def build_kserve_manager() -> Path:
    """KServe's controller-manager, ``./cmd/manager`` of its module."""
    return build_module_command(KSERVE_MANAGER, KSERVE_VERSION, KSERVE_MODULE, "./cmd/manager")


def build_versitygw() -> Path:
    """versitygw, the S3 gateway over a local folder."""
    return build_module_command("versitygw", VERSITYGW_VERSION, VERSITYGW_MODULE, "./cmd/versitygw")


def traefik_binary() -> Path:
    """Where the built Traefik lives (the cache path the project's set-up uses)."""
    return module_binary("traefik", TRAEFIK_VERSION)


def build_traefik() -> Path:
    """Build Traefik from its Go module (first use only: ~15 min on 2 cores), inside the module directory."""
    return build_module_command("traefik", TRAEFIK_VERSION, TRAEFIK_MODULE, "./cmd/traefik")


def prometheus_binary() -> Path:
    """Where the built Prometheus lives."""
    return module_binary("prometheus", PROMETHEUS_VERSION)


def build_prometheus() -> Path:
    """Build Prometheus from its Go module with Kubernetes service discovery (Debian's package has none).

    Only the Kubernetes SD plugin is compiled in (build tags ``remove_all_sd,enable_kubernetes_sd``;
    file and HTTP SD are always there), which keeps the cloud SDKs out of the build. Its module
    ships a go.work (for its own sub-modules): the module is built alone.
    """
    module, module_version = PROMETHEUS_MODULE
    version = PROMETHEUS_VERSION.lstrip("v")
    return build_module_command(
        "prometheus",
        PROMETHEUS_VERSION,
        module,
        "./cmd/prometheus",
        module_version=module_version,
        tags="remove_all_sd,enable_kubernetes_sd",
        ldflags=f"-s -w -X github.com/prometheus/common/version.Version={version}",
        env={"GOWORK": "off"},
    )


@dataclass
class Binaries:
    """Paths of the built binaries the test bed runs."""

    kube_apiserver: str
    kube_controller_manager: str
    kube_scheduler: str
    kubectl: str
    etcd: str
    kwok: str
    helm: str
    traefik: str
    kserve_manager: str
    versitygw: str


def build() -> Binaries:
    """Build (or find in the cache) every binary the test bed needs."""
    kube = _build_wrapper("kube", KUBERNETES_VERSION, HACK / "kube", "./cmd/kube", _kube_ldflags(KUBERNETES_VERSION))
    for alias in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"):
        link = kube / alias
        if not link.exists():
            link.symlink_to("kube")
    etcd = _build_wrapper("etcd", ETCD_VERSION, HACK / "etcd", ".")
    kwok = _go_install("kwok", "sigs.k8s.io/kwok/cmd/kwok", KWOK_VERSION)
    helm = _go_install("helm", "helm.sh/helm/v3/cmd/helm", HELM_VERSION)
    traefik = build_traefik()
    build_prometheus()
    kserve_manager, versitygw = build_kserve_manager(), build_versitygw()
    return Binaries(
        kube_apiserver=str(kube / "kube-apiserver"),
        kube_controller_manager=str(kube / "kube-controller-manager"),
        kube_scheduler=str(kube / "kube-scheduler"),
        kubectl=str(kube / "kubectl"),
        etcd=str(etcd / "etcd"),
        kwok=str(kwok / "kwok"),
        helm=str(helm / "helm"),
        traefik=str(traefik),
        kserve_manager=str(kserve_manager),
        versitygw=str(versitygw),
    )
