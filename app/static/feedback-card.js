"use strict";

// The lesson's feedback card (loaded before lesson.js, which makes the one instance). Every field is model
// output: it is set as text, never parsed as HTML. The personal page's server-rendered cards
// (templates/_feedback.html) have the same structure.
class FeedbackCard {
  constructor(section, status, card) {
    this.section = section;
    this.status = status;
    this.card = card;
    this.waiting = false; // "Preparing your feedback…" is shown
  }

  clear() {
    this.waiting = false;
    this.section.hidden = true;
    this.status.textContent = "";
    this.card.replaceChildren();
  }

  pending() {
    this.waiting = true;
    this.status.textContent = "Preparing your feedback…";
    this.reveal();
  }

  // No feedback is on its way after all (the page's error says why): the card does not promise one.
  withdraw() {
    if (this.waiting) this.clear();
  }

  unavailable(message) {
    this.waiting = false;
    this.status.textContent = message;
    this.reveal();
  }

  // On a phone the card may start below the screen's edge, under the form unfolded at the lesson's end.
  reveal() {
    this.section.hidden = false;
    this.section.scrollIntoView({ block: "nearest" });
  }

  show(feedback) {
    const card = textElement("article", "feedback-card");
    card.append(
      textElement("p", "feedback-card__summary", feedback.summary ?? ""),
      ...listSection("Say it better", "feedback-card__corrections", feedback.corrections, (entry, correction) => {
        entry.append(
          textElement("span", "feedback-card__said", correction.said ?? ""),
          " → ",
          textElement("span", "feedback-card__better", correction.better ?? ""),
          textElement("span", "feedback-card__why", correction.why ?? ""),
        );
      }),
      ...listSection("New words", "feedback-card__words", feedback.new_words, (entry, word) => {
        entry.append(textElement("strong", "feedback-card__word", word.word ?? ""), " — ", String(word.meaning ?? ""));
      }),
      textElement("h3", "feedback-card__heading", "Next time"),
      textElement("p", "feedback-card__next", feedback.next_step ?? ""),
    );
    this.waiting = false;
    this.status.textContent = "";
    this.card.replaceChildren(card);
    this.reveal();
  }
}

function textElement(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = String(text);
  return node;
}

// A heading and its list, or nothing when the model gave no entries.
function listSection(title, className, items, fill) {
  if (!Array.isArray(items) || items.length === 0) return [];
  const list = textElement("ul", className);
  for (const item of items) {
    const entry = textElement("li");
    fill(entry, item ?? {});
    list.append(entry);
  }
  return [textElement("h3", "feedback-card__heading", title), list];
}
