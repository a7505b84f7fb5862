"""docs/ARCHITECTURE.md kept true: every import in core/ and apps/ points down the layers, never up."""
import ast
from pathlib import Path

from conftest import ROOT

LAYERS = {"base": 1, "models": 2, "registry": 3, "services": 4, "apps": 5}
SERVICES = {"train", "resume", "hub", "cards", "evaluate", "sample", "compress", "services"}
APPS_MAY_IMPORT = ("core.services", "core.data", "core.runs", "core.families")   # never a model or a scheduler:
# the sampler goes through the services, the monitor reads run files (and its opt-in launcher lists the families)


def layer(module: str) -> str | None:
    """The layer of a genlab module name ("core.models.gan" -> "models"); None for third-party modules."""
    parts = module.split(".")
    if parts[0] == "apps":
        return "apps"
    if parts[0] != "core" or len(parts) == 1:
        return None
    if parts[1] == "models":
        return "models"
    if parts[1] == "families":
        return "registry"
    return "services" if parts[1] in SERVICES else "base"


def imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names
                                      if node.module in ("core", "core.models")]
    return names


def module_name(path: Path, root: Path) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def violations(root: Path = ROOT) -> list[str]:
    found = []
    for path in sorted((root / "core").rglob("*.py")) + sorted((root / "apps").glob("*.py")):
        name_here = module_name(path, root)
        own = layer(name_here)
        for name in imports(path):
            if name.split(".")[0] == "importlib":
                found.append(f"{name_here} uses importlib")
            other = layer(name)
            if other and LAYERS[other] > LAYERS[own]:
                found.append(f"{name_here} ({own}) imports {name} ({other})")
            if own == "apps" and other and other != "apps" and not name.startswith(APPS_MAY_IMPORT):
                found.append(f"{name_here} (apps) imports {name}: apps go through core.services")
    return found


def test_imports_point_down_the_layers_only():
    assert violations() == []


def test_the_rule_catches_upward_arrows(tmp_path):
    """The checker itself: each forbidden arrow of the page, written into a scratch tree, is reported."""
    for folder in ("core/models", "apps"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "core" / "models" / "bad.py").write_text("from core.train import train\n")
    (tmp_path / "core" / "metrics.py").write_text("from core.hub import load_model\nfrom core.models import gan\n")
    (tmp_path / "core" / "train.py").write_text("import apps.sampler\nimport importlib\n")
    (tmp_path / "apps" / "ui.py").write_text("from core.models import ddpm\nfrom core.schedulers import DDIMScheduler\n"
                                            "from core.services import SERVICES\n")
    found = violations(tmp_path)
    assert any("core.models.bad (models) imports core.train" in f for f in found)
    assert any("core.metrics (base) imports core.hub" in f for f in found)
    assert any("core.metrics (base) imports core.models.gan" in f for f in found)
    assert any("core.train (services) imports apps.sampler" in f for f in found)
    assert any("core.train uses importlib" in f for f in found)
    assert any("apps.ui (apps) imports core.models" in f for f in found)
    assert any("apps.ui (apps) imports core.schedulers: apps go through core.services" in f for f in found)
    assert not any("imports core.services" in f for f in found)


def test_files_and_functions_stay_small():
    """No module of core/ or apps/ over 400 lines, no function over 60 (docs/ARCHITECTURE.md), sampler.py under 300."""
    long = []
    for path in sorted((ROOT / "core").rglob("*.py")) + sorted((ROOT / "apps").glob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > 400:
            long.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1}")
    assert len((ROOT / "apps" / "sampler.py").read_text().splitlines()) < 300
    assert long == []
