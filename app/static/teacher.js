// Teacher's desk: the only script. It shows every time in the teacher's own time zone, and every "Copy"
// button copies the lesson link in the field it names (aria-controls). Without it the times stay in UTC
// and the field is still there to select and copy by hand.
"use strict";

// <time datetime="…Z" data-local>2026-03-02 09:30 UTC</time> → "Mon 2 Mar 2026, 10:30" where the teacher is,
// with the UTC time kept as its title; the page's own title (a lesson's start) changes with it.
const localTime = new Intl.DateTimeFormat(undefined, {
  weekday: "short", day: "numeric", month: "short", year: "numeric", hour: "2-digit", minute: "2-digit",
});
for (const element of document.querySelectorAll("time[data-local]")) {
  const at = new Date(element.getAttribute("datetime"));
  if (Number.isNaN(at.getTime())) continue;
  element.title = element.textContent;
  element.textContent = localTime.format(at);
  document.title = document.title.replace(element.title, element.textContent);
}

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
