"use strict";

// The lesson this tab may resume (after a reload): {token, graceMs, name, level, awaitingFeedback, feedbackUntil,
// leftAt}.
// Loaded before lesson.js, which uses `resumeStore`.
const RESUME_KEY = "lessonResume";

// What this tab needs to resume its lesson after a reload; forgotten once the lesson is over.
const resumeStore = {
  save(lesson) {
    const saved = { token: lesson.resumeToken, graceMs: lesson.graceMs, name: lesson.params.name,
      level: lesson.params.level, awaitingFeedback: lesson.feedbackUntil !== null, feedbackUntil: lesson.feedbackUntil };
    this.write(saved);
  },
  left() {
    const saved = this.load();
    if (saved) this.write({ ...saved, leftAt: Date.now() });
  },
  write(saved) {
    try {
      sessionStorage.setItem(RESUME_KEY, JSON.stringify(saved));
    } catch {
      // Storage off (private mode): the lesson still resumes while the tab lives.
    }
  },
  load() {
    try {
      const saved = JSON.parse(sessionStorage.getItem(RESUME_KEY) ?? "null");
      return saved && typeof saved.token === "string" ? saved : null;
    } catch {
      return null;
    }
  },
  forget() {
    try {
      sessionStorage.removeItem(RESUME_KEY);
    } catch {
      // nothing was kept
    }
  },
};
