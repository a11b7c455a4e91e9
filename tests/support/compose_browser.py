"""Chromium in the compose lab's host namespace, as a clinician on the hospital network: sign in
at the public address (nginx's published HTTPS port, its self-signed certificate accepted), open
the study from the worklist, and say how closely what OHIF drew matches the study's slices.

    python -m tests.support.compose_browser URL USER PASSWORD_FILE STUDY_UID SLICES_FOLDER

Prints one JSON line: {"signed_in", "rows", "drawn", "score", "gate_statuses"}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from urllib.parse import urlparse

from tests.support.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    best_match,
    reference_slices,
    wait_for_image,
)


def main(url: str, user: str, password_file: str, study: str, slices: str) -> dict[str, object]:
    from playwright.sync_api import sync_playwright

    host = urlparse(url).hostname
    args = [
        *CHROMIUM_ARGS,
        # The public name resolves to the host's published port, as the hospital's DNS would.
        f"--host-resolver-rules=MAP {host} 127.0.0.1",
    ]
    result: dict[str, object] = {"signed_in": False, "rows": [], "drawn": False, "score": 0.0}
    statuses: list[int] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        context = browser.new_context(
            viewport={"width": 1280, "height": 900}, ignore_https_errors=True
        )
        page = context.new_page()
        page.goto(f"{url}/")
        page.get_by_label("User name").fill(user)
        page.get_by_label("Password").fill(Path(password_file).read_text().strip())
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{url}/worklist", timeout=30_000)
        result["signed_in"] = True
        rows = page.locator("tr[data-study]")
        result["rows"] = [rows.nth(i).get_attribute("data-study") for i in range(rows.count())]
        viewer = context.new_page()
        viewer.on(
            "response",
            lambda r: (
                statuses.append(r.status) if "/dicom-web/" in r.url or "/wado" in r.url else None
            ),
        )
        viewer.goto(f"{url}/worklist")
        viewer.locator(f'tr[data-study="{study}"]').get_by_role("button").click()
        pixels = wait_for_image(viewer, 90.0)
        viewer.screenshot(path=str(Path(slices).parent / "compose-check-viewer.png"))
        if pixels is not None:
            result["drawn"] = True
            result["score"] = best_match(pixels, reference_slices(Path(slices)))
        result["gate_statuses"] = sorted(set(statuses))
        browser.close()
    return result


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:6])), flush=True)
