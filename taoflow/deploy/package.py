"""A model package on the host (docs/model-package.md): its files, their checksums and what the engine key needs.

The device agent validates the package in depth before building or smoke-testing it; the host checks enough to
refuse an obviously broken package before touching any device, and hashes every file once for upload
verification and for the content-addressed default version.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..contract.model_package import FORMAT, graph_files, graphs_problems
from ..fsutil import sha256_file
from .errors import DeployError

REQUIRED = ("model.json", "labels.txt", "samples/expected.json")
# Written by the agent on the device; a package copied back from a device must not ship them again.
DEVICE_OUTPUTS = {"smoke.json", "build.json", "model.engine"}


@dataclass(frozen=True)
class PackageFile:
    rel: str      # POSIX path inside the package
    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class Package:
    path: Path
    meta: dict
    files: tuple
    digest: str   # sha256 over (rel, sha256) of every shipped file

    @property
    def version(self):
        """Default version name: content-addressed, so the same bytes always get the same version."""
        return self.digest[:12]

    @property
    def size(self):
        return sum(f.size for f in self.files)

    @property
    def model_sha256(self):
        """sha256 of model.json's top-level model_file (the package's model; `graphs` may offer others)."""
        return next(f.sha256 for f in self.files if f.rel == self.meta["model_file"])

    @property
    def model_files(self):
        """Every model file model.json names (the top-level one first)."""
        return graph_files(self.meta)

    @property
    def input_shape(self):
        inp = self.meta["input"]
        return [inp["channels"], inp["height"], inp["width"]]

    @property
    def precision(self):
        return self.meta.get("precision", "fp16")


def load_package(path):
    path = Path(path)
    if not path.is_dir():
        raise DeployError(f"model package {path} is not a directory")
    for rel in REQUIRED:
        if not (path / rel).is_file():
            raise DeployError(f"model package is missing {rel}", path=path / rel)
    meta_path = path / "model.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DeployError(f"invalid JSON: {e.msg}", path=meta_path, line=e.lineno) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DeployError(f"not a {FORMAT} model.json", path=meta_path, line=_line(meta_path, "format"))
    model_file = meta.get("model_file")
    if not isinstance(model_file, str) or not (path / model_file).is_file():
        raise DeployError(f"model_file {model_file!r} is not in the package", path=meta_path,
                          line=_line(meta_path, "model_file"))
    for field, message in graphs_problems(meta, exists=lambda name: (path / name).is_file()):
        # graphs.<runtime>...: the line naming that runtime's graph (field names repeat across graphs)
        raise DeployError(f"{field}: {message}", path=meta_path, line=_line(meta_path, field.split(".")[:2][-1]))
    inp = meta.get("input")
    if not isinstance(inp, dict) or not all(isinstance(inp.get(k), int) for k in ("channels", "height", "width")):
        raise DeployError("input needs integer channels, height and width", path=meta_path,
                          line=_line(meta_path, "input"))
    files = []
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(path).parts):
            continue
        if rel in DEVICE_OUTPUTS:
            continue
        files.append(PackageFile(rel, p, p.stat().st_size, sha256_file(p)))
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.rel}\0{f.sha256}\n".encode())
    return Package(path, meta, tuple(files), h.hexdigest())


def _line(path, key):
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if f'"{key}"' in line:
            return number
    return None
