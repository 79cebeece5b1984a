"""Generates squall/_proto/squall_pb2.py (+ .pyi) from proto/squall.proto.

Uses the protoc bundled in grpcio-tools (no system protoc). The output is committed;
CI runs this with --check, which fails when the committed files differ from a fresh
generation (the .proto changed and nobody regenerated).

    python python/scripts/gen_proto.py          # regenerate in place
    python python/scripts/gen_proto.py --check  # exit 1 on a difference
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PROTO_DIR = REPO / "proto"
OUT_DIR = HERE.parent / "src" / "squall" / "_proto"
FILES = ("squall_pb2.py", "squall_pb2.pyi")


def generate(into: Path) -> None:
    from grpc_tools import protoc

    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={into}",
        f"--pyi_out={into}",
        str(PROTO_DIR / "squall.proto"),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> int:
    check = "--check" in sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = []
        for name in FILES:
            fresh = (Path(tmp) / name).read_text()
            target = OUT_DIR / name
            if target.exists() and target.read_text() == fresh:
                continue
            stale.append(name)
            if not check:
                target.write_text(fresh)
    if check and stale:
        print(
            f"generated protobuf code is out of date: {', '.join(stale)}; "
            "run python/scripts/gen_proto.py and commit the result",
            file=sys.stderr,
        )
        return 1
    print("protobuf code " + ("up to date" if check or not stale else f"regenerated: {stale}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
