"""Built-in pgolf plugins, one technique per module (import name `pgolf_plugins`).

Each module is self-contained: it imports only torch/stdlib and public `pgolf_core` names, never
another plugin. They are registered in the `pgolf.plugins` entry-point group in pyproject.toml.
"""
