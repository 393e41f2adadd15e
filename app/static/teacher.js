// Teacher's desk: the only script. Every "Copy" button copies the lesson link in the field it names
// (aria-controls); without this script the field is still there to select and copy by hand.
"use strict";

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
