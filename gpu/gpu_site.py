"""Install the staged wheels this machine lacks into one folder, for ``PYTHONPATH`` (gpu/README.md).

    python3 gpu/gpu_site.py [--wheels .whl] [--target /tmp/site]  &&  PYTHONPATH=/tmp/site make gpu-check

The lent GPU machine reaches no package registry and has its own torch, transformers and whatever else its image
holds. A staged wheel whose distribution is already installed there is left out: the machine's copy was built for its
torch (torchvision is compiled against one torch release) and fits its other packages, while a copy on ``PYTHONPATH``
would shadow it. Everything else is installed without dependencies (the staged set is complete, see
``gpu/gpu_wheels.sh``). perceiver-stream's own wheel is installed although it asks for Python 3.11: the lent machine
has 3.12, under which the staged stack is rehearsed (``gpu/gpu_rehearse.sh``). Prints what it installed and what it
kept.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path


def distribution(wheel: Path) -> str:
    """The distribution a wheel file installs, normalised as installers record it (``python_dateutil``)."""
    return re.sub(r"[-_.]+", "_", wheel.name.split("-")[0]).lower()


def plan(wheels: list[Path]) -> tuple[list[Path], dict[str, str]]:
    """The wheels to install, and ``{distribution: installed version}`` of those this interpreter already has."""
    install, kept = [], {}
    for wheel in wheels:
        name = distribution(wheel)
        try:
            kept[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            install.append(wheel)
    return install, kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheels", type=Path, default=Path(__file__).resolve().parents[1] / ".whl")
    parser.add_argument("--target", type=Path, default=Path("/tmp/site"))
    args = parser.parse_args(argv)
    wheels = sorted(args.wheels.glob("*.whl"))
    if not wheels:
        print(f"gpu_site.py: error: no wheels in {args.wheels}; stage them with gpu/gpu_wheels.sh", file=sys.stderr)
        return 2
    install, kept = plan(wheels)
    if install:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--upgrade",
                        "--ignore-requires-python", "--target", str(args.target), *map(str, install)], check=True)
    print(f"gpu_site.py: installed {len(install)} wheel(s) into {args.target}; kept this machine's "
          f"{', '.join(f'{name} {version}' for name, version in kept.items()) or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
