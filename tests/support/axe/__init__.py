"""axe-core from npm (pinned in package-lock.json here), for the accessibility checks of our pages.

`make system` (`neuronova stack install`, which `make demo` and `make test` both run) installs it
into this folder's node_modules/ (ignored by git), so no test needs the network; the tests inject
`axe.min.js` into a page (Playwright's `bypass_csp`: our CSP allows no foreign script) and keep
the violations of impact serious or critical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neuronova.node import npm_packages_current

AXE_DIR = Path(__file__).parent
AXE_SCRIPT = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
SEVERE = ("serious", "critical")


def axe_script() -> str:
    """axe.min.js, as `make system` installed it from the lock file (a test installs nothing)."""
    if not npm_packages_current(AXE_DIR) or not AXE_SCRIPT.exists():
        raise RuntimeError(
            f"axe-core is not installed from {AXE_DIR}/package-lock.json: run `make system`"
        )
    return AXE_SCRIPT.read_text()


def severe_violations(page: Any) -> list[str]:
    """axe-core's serious and critical findings on the page as it is now, one line each."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(content=axe_script())
    violations = page.evaluate("async () => (await axe.run(document)).violations")
    return [
        f"{v['impact']}: {v['id']} ({v['help']}) at "
        + ", ".join(str(n["target"]) for n in v["nodes"][:3])
        for v in violations
        if v.get("impact") in SEVERE
    ]
