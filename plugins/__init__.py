"""rtk's built-in plugins, registered through the ``rtk`` entry-point group like any third-party plugin.

Each top-level module is one plugin (one family of components) and is light to import; the
torch-heavy implementations live in ``rtk_plugins._lib`` and are imported by the factories.
"""
