"""featkit's built-in evaluation protocols, a plugin package like any other.

Each module holds one :class:`featkit.protocols.Protocol` subclass, declared under the
``featkit.protocols`` entry-point group in featkit's pyproject.toml; featkit's core
imports none of them. Definitions, defaults and references: docs/protocols.md.
"""
