"""rtk's built-in plugins, registered through the ``rtk`` entry-point group like any third-party plugin.

One folder per method or family: its ``__init__`` holds the configs and the register lines (light
to import, no torch), the implementation sits beside it and is imported only when a component is
built (``register(name, "rtk_plugins.family.module:Name", ...)``).
"""
