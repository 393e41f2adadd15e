// Teacher's desk: the script of every page (the lessons under way add teacher-live.js). It shows every time in the
// teacher's own time zone (markup fetched later too, on its "desk:content" event), every "Copy"
// button copies the lesson link in the field it names (aria-controls), and a form sent back with errors gets
// the focus. Without it the times stay in UTC, the field is still there to select and copy by hand, and the
// errors are still announced (role="alert") and tied to their fields.
"use strict";

// <time datetime="…Z" data-local>2026-03-02 09:30 UTC</time> → "Mon 2 Mar 2026, 10:30 CET" where the teacher is,
// with the UTC time kept as its title; the page's own title (a lesson's start) changes with it. The zone is named,
// since the exports and the failures page, beside it, give their times in UTC.
const localTime = new Intl.DateTimeFormat(undefined, {
  weekday: "short", day: "numeric", month: "short", year: "numeric", hour: "2-digit", minute: "2-digit",
  timeZoneName: "short",
});

function showLocalTimes(root) {
  for (const element of root.querySelectorAll("time[data-local]")) {
    const at = new Date(element.getAttribute("datetime"));
    if (Number.isNaN(at.getTime())) continue;
    element.title = element.textContent;
    element.textContent = localTime.format(at);
    document.title = document.title.replace(element.title, element.textContent);
  }
}

showLocalTimes(document);
// Markup a page's own script fetched (teacher-live.js) is announced with this event before it is shown.
document.addEventListener("desk:content", (event) => showLocalTimes(event.detail));

// A form sent back with errors (422): the focus goes to its first invalid field, which reads its error with it
// (aria-describedby), or to the form's summary when the error is of no field the form shows. The summary
// (role="alert") is announced either way.
(document.querySelector('[aria-invalid="true"]') ?? document.getElementById("form-problem"))?.focus();

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const field = document.getElementById(button.getAttribute("aria-controls"));
  if (!field) return;
  const label = button.textContent;
  try {
    await navigator.clipboard.writeText(field.value);
    button.textContent = "Copied";
  } catch {
    // No clipboard permission (e.g. not https): select the text so Ctrl+C / long-press copies it.
    field.focus();
    field.select();
    button.textContent = "Selected: copy it";
  }
  setTimeout(() => { button.textContent = label; }, 2000);
});
