// The worklist, live: the page listens to its alert stream (/worklist/alerts, by the session
// cookie). For each AI result about a study the user may open, and each move of its AI run
// (queued, running, failed, done), it puts that study's row (as the server renders it) at the
// top, or replaces it; a result, a new study, a failed run and a reader's verdict (ai-verdict)
// are said in the notice, the rest changes the row quietly. Signing out, or the session ending elsewhere, closes the stream and
// goes back to the sign-in page.
"use strict";

(() => {
  const notice = document.getElementById("notice");
  const table = document.querySelector("table.worklist");
  if (!notice || !table) return;
  const body = table.tBodies[0];
  // Only the first page of an unfiltered list takes new rows (a search shows what it found).
  const takesNewRows = table.dataset.page === "1" && table.dataset.searched === "0";

  async function showRow(study) {
    const answer = await fetch(`/worklist/row?study=${encodeURIComponent(study)}`, {
      credentials: "same-origin", cache: "no-store",
    });
    if (answer.status === 401) { location.assign("/"); return null; }
    if (answer.status !== 200) return null;
    const holder = document.createElement("tbody");
    holder.innerHTML = (await answer.text()).trim();
    const row = holder.querySelector("tr[data-study]");
    if (!row) return null;
    const old = body.querySelector(`tr[data-study="${CSS.escape(study)}"]`);
    if (old) {
      old.replaceWith(row);
    } else if (takesNewRows) {
      body.prepend(row);
      table.hidden = false;
      const empty = document.querySelector("p.empty");
      if (empty) empty.remove();
    } else {
      return null; // not on this page: nothing changed here
    }
    row.classList.add("fresh");
    return { row, isNew: !old };
  }

  function say(text) {
    notice.textContent = text;
  }

  function describe(row) {
    const who = row.cells[0].textContent.trim();
    const mrn = row.cells[1].textContent.trim();
    const ai = row.querySelector("td.ai").textContent.trim();
    return `${who === "—" ? mrn : `${who} (${mrn})`}: ${ai}.`;
  }

  function studyOf(event) {
    try { return JSON.parse(event.data).study_instance_uid; } catch { return null; }
  }

  const stream = new EventSource("/worklist/alerts");
  stream.addEventListener("ai-result", async (event) => {
    const study = studyOf(event);
    const shown = study && (await showRow(study));
    if (shown) say(`New AI result: ${describe(shown.row)}`);
  });
  stream.addEventListener("ai-state", async (event) => {
    const study = studyOf(event);
    const shown = study && (await showRow(study));
    if (!shown) return;
    if (shown.isNew) say(`New study: ${describe(shown.row)}`);
    else if (shown.row.querySelector("td.ai-failed")) say(`AI reading failed: ${describe(shown.row)}`);
  });
  stream.addEventListener("ai-verdict", async (event) => {
    const study = studyOf(event);
    const shown = study && (await showRow(study));
    if (shown) say(`AI reading reviewed: ${describe(shown.row)}`);
  });
  stream.addEventListener("closed", () => { stream.close(); location.assign("/"); });
  stream.addEventListener("expired", () => { stream.close(); location.assign("/"); });
  stream.addEventListener("error", () => {
    // The browser retries a dropped stream by itself; a refused one (401) stays closed.
    if (stream.readyState === EventSource.CLOSED) say("Live updates stopped: reload the page.");
  });
  window.addEventListener("pagehide", () => stream.close());
})();
