"""Check a built kr image from inside it; run by docker/*.Dockerfile as the last step of the final stage.

Fails the build when the image does not hold what the tests ran against:
- every distribution the image's roots need (kr, or the MLflow server's requirements, transitively) is installed,
  and has exactly the version constraints.txt pins where it pins one (torch is checked separately: the GPU image
  keeps the CUDA build of its base image, the CPU image has the +cpu wheel). Only the dependency closure is
  checked: the GPU base image's own conda packages that kr does not use may differ;
- the packages the pipeline components import are importable (kr, kfp, kfp-kubernetes, mlflow, medmnist, torch);
- torch is the expected version and build (CUDA or CPU);
- a component image's build commit (KR_COMMIT, KR_DIRTY) is what kr records as its code version;
- no C/C++ compiler is on PATH (no build tools in the final stage);
- the process does not run as root;
- with --freeze: `pip freeze` of the venv lists nothing that is not pinned (constraints files, --pin), at that
  exact version (the roots themselves, e.g. kr installed from its wheel, are exempt; torch is checked separately).
Standard library only, so it also runs in the MLflow image (--mlflow).
"""

import argparse
import importlib
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata

COMPILERS = ("gcc", "g++", "cc", "c++", "clang", "clang++", "tcc")
COMPONENT_MODULES = (
    "kr",
    "kr.steps",
    "kr.components",
    "kr.pipelines.knowledge_recycling",
    "kfp",
    "kfp.kubernetes",
    "mlflow",
    "medmnist",
    "torch",
)
MLFLOW_MODULES = ("mlflow", "mlflow.server.auth", "psycopg2", "boto3")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: str) -> dict[str, str]:
    pins = {}
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonical(name.split("[", 1)[0])] = version.strip()
    return pins


def closure(roots: list[str]) -> tuple[dict[str, str], list[str]]:
    """Installed version of every distribution the roots need, transitively (markers and extras evaluated)."""
    from packaging.requirements import Requirement

    found, missing, seen = {}, [], set()
    stack = [Requirement(root) for root in roots]
    while stack:
        requirement = stack.pop()
        name, extras = canonical(requirement.name), frozenset(requirement.extras)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(str(requirement))
            continue
        found[name] = dist.version
        for line in dist.requires or []:
            dependency = Requirement(line)
            markers = [{"extra": extra} for extra in extras or {""}]
            if dependency.marker is None or any(dependency.marker.evaluate(m) for m in markers):
                stack.append(dependency)
    return found, missing


def check_pins(installed: dict[str, str], pins: dict[str, str], skip: set[str]) -> list[str]:
    return [
        f"{name}: installed {installed[name]}, constraints pin {pins[name]}"
        for name in sorted(installed)
        if name in pins and name not in skip and installed[name] != pins[name]
    ]


def check_provenance(checkout: str | None = None) -> list[str]:
    """kr's code_version() names the commit the image was built from (KR_COMMIT, a full hash, and ".dirty" when
    KR_DIRTY=1), so the records made in the image are not "+unknown". An image built without a commit (KR_COMMIT
    unset or "unknown": a plain `docker build`) passes. `checkout` is passed to code_version (tests only)."""
    commit = os.environ.get("KR_COMMIT", "").strip()
    if not commit or commit == "unknown":
        return []
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        return [f"KR_COMMIT={commit!r} is not a full commit hash"]
    from kr.run.tracking import code_version

    want = "+" + commit[:12] + (".dirty" if os.environ.get("KR_DIRTY", "0").strip() == "1" else "")
    version = code_version(checkout)
    if not version.endswith(want):
        return [f"code_version() is {version}, expected it to end in {want} (KR_COMMIT, KR_DIRTY)"]
    return []


def check_freeze(pins: dict[str, str], roots: set[str], skip: set[str]) -> list[str]:
    """`pip freeze` of this interpreter's environment against the pins: every distribution it lists (pip's own
    defaults leave out pip, setuptools and wheel) is pinned, at exactly the installed version."""
    done = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True, check=False)
    if done.returncode:
        return ["pip freeze failed: " + done.stderr.strip()]
    errors = []
    for line in done.stdout.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if " @ " in line:  # NAME @ URL: installed from a file (kr's own wheel)
            name, version = canonical(line.split(" @ ", 1)[0]), None
        elif "==" in line:
            name, version = line.split("==", 1)
            name = canonical(name)
        else:
            errors.append(f"pip freeze: cannot read {line!r}")
            continue
        if name in roots or name in skip:
            continue
        if name not in pins:
            errors.append(f"pip freeze: {line} is installed but not pinned")
        elif version != pins[name]:
            errors.append(f"pip freeze: {line}, the pin is {pins[name]}")
    return errors


def read_roots(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        lines = [line.split("#", 1)[0].strip() for line in f.read().splitlines()]
    return [line.split("==", 1)[0] for line in lines if line]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--constraints", action="append", default=[], help="pinned requirement file(s)")
    parser.add_argument("--root", action="append", default=[], help="a distribution the image exists for")
    parser.add_argument("--roots-from", action="append", default=[], help="requirement file whose names are roots")
    parser.add_argument("--torch", help="expected torch version, without a local label (e.g. 2.13.0)")
    build = parser.add_mutually_exclusive_group()
    build.add_argument("--cuda", action="store_true", help="torch must be a CUDA build")
    build.add_argument("--cpu", action="store_true", help="torch must be a CPU-only build")
    parser.add_argument("--mlflow", action="store_true", help="check the MLflow server image instead")
    parser.add_argument("--pip-check", action="store_true", help="also run `pip check`")
    parser.add_argument("--freeze", action="store_true", help="`pip freeze` lists only pinned versions")
    parser.add_argument(
        "--no-deps", action="append", default=[], help="a distribution installed without its dependencies on purpose"
    )
    parser.add_argument("--pin", action="append", default=[], help="NAME==VERSION pinned outside the files")
    args = parser.parse_args(argv)

    errors = []
    pins = {}
    for path in args.constraints:
        pins.update(read_pins(path))
    for pin in args.pin:
        name, version = pin.split("==", 1)
        pins[canonical(name)] = version
    roots = args.root + [root for path in args.roots_from for root in read_roots(path)]
    if not roots:
        parser.error("name the image's distributions with --root or --roots-from")
    installed, missing = closure(roots)
    errors += [f"required but not installed: {requirement}" for requirement in missing]
    errors += check_pins(installed, pins, skip={"torch"})

    for module in MLFLOW_MODULES if args.mlflow else COMPONENT_MODULES:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001  any import failure is a broken image
            errors.append(f"cannot import {module}: {exc!r}")

    if not args.mlflow:
        try:
            errors += check_provenance()
        except Exception as exc:  # noqa: BLE001  a provenance check that cannot run is a broken image
            errors.append(f"cannot check the code version: {exc!r}")

    if args.torch:
        import torch

        version = torch.__version__.split("+", 1)[0]
        if version != args.torch:
            errors.append(f"torch {torch.__version__}, expected {args.torch}")
        if args.cuda and not torch.version.cuda:
            errors.append(f"torch {torch.__version__} is not a CUDA build")
        if args.cpu and torch.version.cuda:
            errors.append(f"torch {torch.__version__} is a CUDA {torch.version.cuda} build, expected CPU only")

    for compiler in COMPILERS:
        if path := shutil.which(compiler):
            errors.append(f"build tool in the final image: {path}")

    if os.geteuid() == 0:
        errors.append("running as root: the image must set a non-root USER")

    if args.pip_check:
        done = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
        no_deps = {canonical(name) for name in args.no_deps}
        problems = [
            line
            for line in done.stdout.splitlines()
            if line.strip() and canonical(line.split(" ", 1)[0]) not in no_deps and not line.startswith("No broken")
        ]
        if done.returncode and problems:
            errors.append("pip check: " + "\n".join(problems))

    if args.freeze:
        errors += check_freeze(pins, {canonical(root.split("[", 1)[0]) for root in roots}, skip={"torch"})

    for error in errors:
        print(f"verify_image: {error}", file=sys.stderr)
    if not errors:
        print("verify_image: ok")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
