"""Reading a topology file: YAML in, a validated ``Topology`` out, or errors that name the
file, the line and the field.

Who does what: PyYAML composes the file into nodes (each keeps the line it started on);
this module turns the nodes into plain data while noting the line of every field's path,
hands the data to ``model.validate`` and, if that finds problems, prints each as

    labs/x/lab.yaml:12: sandboxes[1].networks[0]: unknown network 'bakcend'

Nothing here touches the kernel, so a bad file is refused before anything is built.
"""

from __future__ import annotations

from pathlib import Path as FsPath
from typing import Any

import yaml

from netns_fixtures.lab.model import Path, Topology, TopologyError, format_path, validate

# libyaml's parser where PyYAML was built with it: the same nodes and marks, ten times
# faster (a lab of 1000 sandboxes: 0.16 s composed in Python, 0.015 s in C).
_FAST_LOADER = getattr(yaml, "CSafeLoader", None)


def _compose(text: str) -> yaml.Node | None:
    """The file's node tree, parsed by libyaml if there; a file it refuses is parsed again
    by PyYAML's own parser, whose messages (the ones the labs' guide shows) are raised."""
    if _FAST_LOADER is not None:
        try:
            return yaml.compose(text, Loader=_FAST_LOADER)
        except yaml.YAMLError:
            pass
    return yaml.compose(text, Loader=yaml.SafeLoader)


class LabFileError(ValueError):
    """A topology file that cannot be used; ``messages`` has one ``file:line: field:
    problem`` line per problem."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = messages
        super().__init__("\n".join(messages))


class _Composer:
    """Plain data from composed YAML nodes, with ``lines[path]`` for every field."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.lines: dict[Path, int] = {}
        self.errors: list[str] = []
        self._scalars = yaml.SafeLoader("")  # only its constructor is used, for scalars

    def data(self, node: yaml.Node, path: Path) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            self._scalars.flatten_mapping(node)  # YAML merge keys (<<: *anchor)
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = self._scalars.construct_object(key_node, deep=True)
                if not isinstance(key, str | int | float | bool):
                    self.errors.append(f"{self.filename}:{key_node.start_mark.line + 1}: "
                                       f"{format_path(path)}: a key must be plain text")
                    continue
                key = str(key)
                if key in result:
                    self.errors.append(
                        f"{self.filename}:{key_node.start_mark.line + 1}: "
                        f"{format_path(path + (key,))}: duplicate key {key!r} (first at line "
                        f"{self.lines.get(path + (key,), '?')})")
                    continue
                self.lines[path + (key,)] = key_node.start_mark.line + 1
                result[key] = self.data(value_node, path + (key,))
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.data(item, path + (i,)) for i, item in enumerate(node.value)]
        return self._scalars.construct_object(node, deep=True)

    def line_of(self, path: Path) -> int:
        """The line of ``path``, or of its nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return 1


def load_text(text: str, filename: str = "<topology>") -> Topology:
    """Parse and validate a topology given as text; ``filename`` only labels errors."""
    try:
        node = _compose(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        context = ""
        if exc.context and exc.context_mark is not None and exc.context_mark.line + 1 != line:
            context = f" ({exc.context} that starts at line {exc.context_mark.line + 1})"
        raise LabFileError([f"{filename}:{line}: YAML syntax: {exc.problem or exc}"
                            f"{context}"]) from None
    except yaml.YAMLError as exc:
        raise LabFileError([f"{filename}:1: YAML: {exc}"]) from None
    if node is None:
        raise LabFileError([f"{filename}:1: the file is empty: a lab needs at least "
                            "'name' and 'hosts'"])
    composer = _Composer(filename)
    try:
        data = composer.data(node, ())
    except yaml.YAMLError as exc:  # e.g. a bad timestamp or tag while constructing
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise LabFileError([f"{filename}:{line}: YAML: {exc}"]) from None
    messages = list(composer.errors)
    try:
        topology = validate(data)
    except TopologyError as exc:
        messages += [f"{filename}:{composer.line_of(p.path)}: {p}" for p in exc.problems]
        topology = None
    if messages or topology is None:
        raise LabFileError(sorted(messages, key=_line_key))
    return topology


def load(path: str | FsPath) -> Topology:
    """Read and validate the topology file at ``path``."""
    try:
        text = FsPath(path).read_text()
    except OSError as exc:
        raise LabFileError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    return load_text(text, str(path))


def _line_key(message: str) -> tuple[str, int]:
    """Sort messages by line (stable for problems on one line)."""
    parts = message.split(":", 2)
    return (parts[0], int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0)
