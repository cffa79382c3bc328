"""Render specs back to TAO's text format, with the paths of a run rewritten.

A spec in specs/ names paths relative to a dataset; a run needs them pointing at its content-addressed store or,
for the TAO launcher, at container paths. Rendering starts from the spec as written (not the defaulted copy), so
TAO sees exactly the user's settings apart from the paths.
"""

from google.protobuf import text_format

# Every string field that holds a filesystem path or glob, by name, in either spec message.
PATH_FIELDS = frozenset({
    "label_directory_path", "image_directory_path", "root_path", "tfrecords_path",
    "resume_model_path", "pretrain_model_path", "pruned_model_path",
    "root_directory_path", "kitti_sequence_to_frames_file",
})


def rewrite_paths(message, fn, _prefix=""):
    """Copy of message with fn(field_path, value) applied to every non-empty path field."""
    out = type(message)()
    out.CopyFrom(message)
    _rewrite_in_place(out, fn, _prefix)
    return out


def _rewrite_in_place(msg, fn, prefix):
    for fdesc, value in msg.ListFields():
        path = f"{prefix}{fdesc.name}"
        if fdesc.message_type is not None and not fdesc.message_type.GetOptions().map_entry:
            items = value if fdesc.is_repeated else [value]
            for item in items:
                _rewrite_in_place(item, fn, path + ".")
        elif fdesc.name in PATH_FIELDS and isinstance(value, str) and value:
            setattr(msg, fdesc.name, fn(path, value))


def render(message):
    """Text format TAO's text_format.Merge reads back to an equal message (UTF-8 kept readable)."""
    return text_format.MessageToString(message, as_utf8=True)
