// Lessons under way (/teacher/live): the list keeps itself current. Every few seconds while the tab is shown it
// reads the list again (data-update-url: the template the page was rendered from, alone) and updates the page in
// place: the time of "As of", the rows that started, ended or changed. Nothing the teacher is in is replaced: a
// cell holding the focus or an opened End lesson question stays as it is (a row whose lesson has ended stays until
// the teacher leaves it), so the focus, the scroll position and a confirmation in progress are kept. #live-status
// says politely, for screen readers, when the lessons listed change, and shows "Could not update; retrying." while
// the desk does not answer (the last list stays). Signed out or expired (401): the page is reloaded, which asks
// the teacher to sign in. Without this script the page's Refresh link reads it again.
"use strict";

const live = document.getElementById("live-lessons");
const liveStatus = document.getElementById("live-status");
const updateEveryMs = Number(live.dataset.updateSeconds) * 1000;
const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
let timer = null;
let reading = false;
let failing = false;

// What the teacher is in: the focus is inside, or an End lesson question is open.
function inUse(element) {
  return element.contains(document.activeElement) || element.querySelector("details[open]") !== null;
}

function lessonIds(root) {
  return [...root.querySelectorAll("tr[data-lesson]")].map((row) => row.dataset.lesson).join(" ");
}

function updateCells(row, fresh) {
  const freshCells = [...fresh.cells];
  [...row.cells].forEach((cell, index) => {
    const freshCell = freshCells[index];
    if (freshCell && cell.innerHTML !== freshCell.innerHTML && !inUse(cell)) cell.replaceWith(freshCell);
  });
}

// Rows are kept in the server's order (newest first), which an update never changes for the rows both have: a new
// row goes after the one listed before it, so that no row already shown is moved (moving it would drop its focus).
function updateRows(tbody, freshRows) {
  const shown = new Map([...tbody.rows].map((row) => [row.dataset.lesson, row]));
  const listed = new Set(freshRows.map((row) => row.dataset.lesson));
  for (const [id, row] of shown) {
    if (!listed.has(id) && !inUse(row)) row.remove();
  }
  let previous = null;
  for (const fresh of freshRows) {
    const row = shown.get(fresh.dataset.lesson);
    if (row) {
      updateCells(row, fresh);
      previous = row;
    } else {
      if (previous) previous.after(fresh);
      else tbody.prepend(fresh);
      previous = fresh;
    }
  }
}

function updateList(fresh) {
  const list = document.getElementById("live-list");
  const freshList = fresh.querySelector("#live-list");
  const tbody = list.querySelector("tbody");
  if (tbody) updateRows(tbody, [...freshList.querySelectorAll("tbody > tr")]);
  // "No lesson is under way" and the table take each other's place whole: neither then holds anything in use.
  if (!tbody || tbody.rows.length === 0) list.replaceWith(freshList);
  else list.querySelector("caption").textContent = fresh.dataset.summary;
}

function say(words, problem) {
  liveStatus.textContent = words;
  liveStatus.classList.toggle("visually-hidden", !problem);
  liveStatus.classList.toggle("live-status--problem", problem);
}

function update(fresh) {
  // Times in the teacher's own zone first (teacher.js), so that an unchanged cell compares equal.
  document.dispatchEvent(new CustomEvent("desk:content", { detail: fresh }));
  // Read before the update, which moves the new rows and cells into the page.
  const changed = lessonIds(fresh) !== lessonIds(live);
  const asOf = new Date(fresh.querySelector("#live-as-of time").getAttribute("datetime"));
  document.getElementById("live-as-of").replaceChildren(...fresh.querySelector("#live-as-of").childNodes);
  updateList(fresh);
  if (failing || changed) say(`${fresh.dataset.summary}, updated ${clock.format(asOf)}.`, false);
  failing = false;
}

// The list as the desk sends it now: { list }, { signedOut: true } on a 401, {} when the desk does not answer with
// a list (down, unreachable, or an error page).
async function readList() {
  try {
    // An answer that does not come within an update's time counts as none, so that the next update is not held up.
    const answer = await fetch(live.dataset.updateUrl, {
      cache: "no-store", headers: { Accept: "text/html" }, signal: AbortSignal.timeout(updateEveryMs),
    });
    if (answer.status === 401) return { signedOut: true };
    if (!answer.ok) return {};
    const page = new DOMParser().parseFromString(await answer.text(), "text/html");
    return { list: page.getElementById("live-lessons") };
  } catch {
    return {}; // a network error, an answer that broke off, or none in time
  }
}

function schedule() {
  clearTimeout(timer);
  timer = document.visibilityState === "visible" && !reading ? setTimeout(refresh, updateEveryMs) : null;
}

async function refresh() {
  clearTimeout(timer);
  reading = true;
  const { list, signedOut } = await readList();
  reading = false;
  if (signedOut) {
    window.location.reload(); // the page itself then asks the teacher to sign in, coming back here after
    return;
  }
  if (list) {
    update(list);
  } else if (!failing) {
    failing = true;
    say("Could not update; retrying.", true);
  }
  schedule();
}

// A hidden tab reads nothing; shown again, it reads the list at once.
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible" && !reading) refresh();
  else schedule();
});
schedule();
