"""tools/*.py as modules, for tests that call a converter or a baseline in-process (the tools are
scripts beside the project, not a package). SCANSERVE_SOURCE_DIR: default two levels above this file."""
import importlib.util
import os

SOURCE_DIR = os.environ.get("SCANSERVE_SOURCE_DIR") or os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))))


def tool_path(name):
    """tools/NAME.py's path."""
    return os.path.join(SOURCE_DIR, "tools", name + ".py")


def load_tool(name):
    """tools/NAME.py, freshly executed as module NAME."""
    spec = importlib.util.spec_from_file_location(name, tool_path(name))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
