"use strict";

// The lesson page's transcript (loaded before lesson.js, which makes the one instance).
// A turn's words grow in the visible transcript as they stream in; screen readers hear each turn once, when it
// is finished, from a visually hidden live region.
const ANNOUNCED_TURNS_KEPT = 5;

class Transcript {
  constructor(region, announcer) {
    this.region = region;
    this.announcer = announcer;
    this.lang = region.dataset.lang ?? ""; // the lesson's language, for screen readers' pronunciation
    this.turns = new Map();
    this.quiet = false; // while a resumed lesson's past turns come back: they are shown, not read out again
  }

  clear() {
    this.region.replaceChildren();
    this.announcer.replaceChildren();
    this.turns.clear();
  }

  turn(role, itemId) {
    let text = this.turns.get(itemId);
    if (text === undefined) {
      role = role === "tutor" ? "tutor" : "student";
      const turn = document.createElement("div");
      turn.className = `turn turn--${role}`;
      const label = document.createElement("span");
      label.className = "turn__who";
      label.textContent = role === "tutor" ? "Tutor" : "You";
      text = document.createElement("p");
      text.className = "turn__text";
      if (this.lang) text.lang = this.lang;
      turn.append(label, text);
      this.region.append(turn);
      this.turns.set(itemId, text);
    }
    return text;
  }

  delta(role, itemId, text) {
    this.turn(role, itemId).append(text);
    this.region.scrollTop = this.region.scrollHeight;
  }

  // A finished turn; `interrupted`: a tutor turn cut short, `text` being what the student heard of it (they
  // heard it, so it is not read out again; heard none of it, it goes).
  done(role, itemId, text, interrupted = false) {
    const words = this.turn(role, itemId);
    words.textContent = text;
    if (interrupted) this.markCut(itemId, words, text);
    this.region.scrollTop = this.region.scrollHeight;
    if (!this.quiet && !interrupted && text.trim()) this.announce(role === "tutor" ? "Tutor" : "You", text);
  }

  markCut(itemId, words, text) {
    const turn = words.parentElement;
    if (!text.trim()) {
      turn.remove();
      this.turns.delete(itemId);
      return;
    }
    turn.classList.add("turn--cut");
    if (turn.querySelector(".turn__note")) return;
    const note = document.createElement("span");
    note.className = "turn__note";
    note.textContent = "Cut off";
    turn.append(note);
  }

  // A live region's additions are read out; removing the oldest is not, and keeps it small.
  announce(who, text) {
    const words = document.createElement("span");
    words.textContent = text;
    if (this.lang) words.lang = this.lang;
    const line = document.createElement("p");
    line.append(`${who}: `, words);
    this.announcer.append(line);
    while (this.announcer.childElementCount > ANNOUNCED_TURNS_KEPT) this.announcer.firstElementChild.remove();
  }
}
