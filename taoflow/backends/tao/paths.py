"""Host <-> container paths for one launcher invocation, and the container-side copy of a spec.

Mounts are the user's explicit ones (host dir -> container dir, as in ~/.tao_mounts.json) plus automatic ones:
any directory a step needs that no explicit mount covers is mounted at its own path under `/workspace/host`
(`/data/crpd` -> `/workspace/host/data/crpd`). Mirroring keeps container paths readable in TAO's logs, makes
the translation independent of which directories happen to be mounted, and makes it trivially reversible.

Paths are compared after `realpath`, because the launcher realpaths every mount source before binding it.
With TAO_DOCKER_DISABLE=1 there is no container: the map is the identity.
"""

import os
from pathlib import Path

from ...errors import SpecError, TaoflowError
from ...spec import load_dataset_export, load_experiment, render, rewrite_paths

CONTAINER_ROOT = "/workspace/host"
_GLOB_CHARS = "*?["


def _real(path):
    return os.path.realpath(os.path.abspath(os.path.expanduser(str(path))))


def _inside(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")


class PathMap:
    def __init__(self, mounts=(), identity=False):
        self.identity = identity
        self.explicit = []  # (host realpath, container path)
        for host, container in mounts:
            container = str(container)
            if not os.path.isabs(container):
                raise TaoflowError(f"mount destination {container!r} must be an absolute container path")
            if not os.path.isdir(host):
                raise TaoflowError(f"mount source {host} does not exist or is not a directory (the launcher "
                                   "refuses missing sources); create it or fix the mount")
            self.explicit.append((_real(host), os.path.normpath(container)))
        self.auto = []  # host realpaths mounted at CONTAINER_ROOT + path

    @property
    def mounts(self):
        """(host, container) pairs for the launcher's Mounts list."""
        if self.identity:
            return []
        return [*self.explicit, *((h, CONTAINER_ROOT + h) for h in self.auto)]

    def need(self, directories):
        """Mount each existing directory not already visible, keeping only outermost automatic mounts."""
        if self.identity:
            return
        for d in sorted({_real(d) for d in directories if os.path.isdir(d)}, key=len):
            if d == "/":
                raise TaoflowError("refusing to mount the host's / into the TAO container; keep data, specs and "
                                   "results under a data directory or add an explicit mount")
            if ":" in d:
                raise TaoflowError(f"{d}: docker cannot mount a path containing ':'; rename it")
            if any(_inside(d, h) for h, _ in self.explicit) or any(_inside(d, h) for h in self.auto):
                continue
            self.auto = [h for h in self.auto if not _inside(h, d)] + [d]

    def to_container(self, path):
        if self.identity:
            return os.path.abspath(os.path.expanduser(str(path)))
        real = _real(path)
        best = max((m for m in self.explicit if _inside(real, m[0])), key=lambda m: len(m[0]), default=None)
        if best is None:
            return CONTAINER_ROOT + real
        rest = real[len(best[0]):].lstrip("/")
        return f"{best[1].rstrip('/')}/{rest}" if rest else best[1]

    def to_host(self, path):
        path = os.path.normpath(str(path))
        if self.identity:
            return Path(path)
        best = max((m for m in self.explicit if _inside(path, m[1])), key=lambda m: len(m[1]), default=None)
        if best is not None:
            rest = path[len(best[1]):].lstrip("/")
            return Path(best[0]) / rest if rest else Path(best[0])
        if _inside(path, CONTAINER_ROOT) and path != CONTAINER_ROOT:
            return Path(path[len(CONTAINER_ROOT):])
        raise TaoflowError(f"container path {path} is outside every mount")

    def translate_text(self, text):
        """Container paths under the mirrored root in free text (TAO's messages) shown as host paths."""
        if self.identity or not text:
            return text
        for host, container in sorted(self.explicit, key=lambda m: len(m[1]), reverse=True):
            text = text.replace(container.rstrip("/") + "/", host.rstrip("/") + "/")
        return text.replace(CONTAINER_ROOT + "/", "/")


def mount_dir(path):
    """Directory to mount so that `path` (file, directory or glob) is visible: None when nothing of it exists."""
    text = str(path)
    cut = min((text.index(c) for c in _GLOB_CHARS if c in text), default=None)
    if cut is not None:
        text = os.path.dirname(text[:cut])
    p = Path(text)
    if p.is_dir():
        return p
    if p.exists() or p.parent.is_dir():
        return p.parent
    return None


class ContainerSpec:
    """A spec with relative paths resolved (on the host) and then rewritten to container paths.

    `load()` parses and validates the spec and collects the host paths it names; after the mounts are planned,
    `write()` renders the container copy. Experiment specs (`-e`) and dataset_export specs (`-d`) both work.
    """

    def __init__(self, spec_path, task, data_root=None):
        self.spec_path = Path(spec_path)
        self.task = task
        self.data_root = data_root
        if task == "dataset_convert":
            self.message = load_dataset_export(spec_path).raw
        else:
            spec_task = {"gen_trt_engine": "export"}.get(task, task)
            self.message = load_experiment(spec_path, task=spec_task).raw
        self.absolute = rewrite_paths(self.message, self._resolve)
        self.host_paths = []
        rewrite_paths(self.absolute, self._collect)

    def _resolve(self, field, value):
        name = field.rsplit(".", 1)[-1]
        value = os.path.expanduser(value)
        if os.path.isabs(value) or name == "kitti_sequence_to_frames_file":
            return value  # TAO resolves kitti_sequence_to_frames_file against root_directory_path itself
        if self.data_root is not None:
            return os.path.join(os.path.abspath(self.data_root), value)
        if self.task == "dataset_convert":
            # TAO joins the data root with $DATA_BASE_PATH (or ~/datasets) inside the container, where neither
            # is the user's; apply that rule on the host instead.
            base = os.environ.get("DATA_BASE_PATH") or os.path.expanduser("~/datasets")
            return os.path.join(os.path.abspath(base), value)
        raise SpecError(f"{field} is a relative path ({value!r}); pass data_root= to resolve it",
                           path=self.spec_path)

    def _collect(self, field, value):
        if os.path.isabs(value):
            self.host_paths.append(value)
        return value

    def mount_dirs(self):
        return [d for d in (mount_dir(p) for p in self.host_paths) if d is not None]

    def write(self, out_path, pathmap):
        container = rewrite_paths(self.absolute, lambda _f, v: pathmap.to_container(v) if os.path.isabs(v) else v)
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(f"# Rendered by taoflow from {self.spec_path} for the TAO container.\n"
                            + render(container), encoding="utf-8")
        return out_path
