// What the lesson page shows, and the student's form: its elements, its words (statuses, what a close code
// means, the messages of a lesson that ended badly), how a status and an error are shown, and the lesson's
// parameters read from the form. Loaded before lesson.js, whose lesson drives it.
//
// Test hook, read by tests/browser and bench/:
//   window.lessonDebug = {
//     state,            the last lesson status ("idle", "connecting", …, "ended")
//     socket,           "open" or "closed"; closeCode, the close code once closed
//     contextRate,      the AudioContext's sample rate
//     framesSent, bytesSent, frameBytes, captureDropped   microphone frames sent upstream
//     paceDropped,      microphone frames dropped for coming faster than real time (lesson.js, MicrophonePace)
//     received,         {item_id: 24 kHz samples of tutor audio received}
//     played,           {item_id: 24 kHz samples the playback worklet rendered}
//     finished,         {item_id: samples rendered when the item finished or was flushed}
//     interrupted,      [item_id] items the relay interrupted (their queue was flushed)
//     durations,        {item_id: duration_ms from audio.done}
//     startLatencyMs,   {item_id: ms from the item's first binary frame arriving to its first
//                        sample reaching the output, per AudioContext.getOutputTimestamp()}
//     outputLatencyMs,  the context's own base + output latency
//     underruns,        playback underruns (the jitter buffer ran dry mid-item)
//     errors,           [{code, message, fatal}] error frames received
//     feedback,         the lesson's feedback frame once shown as the card (or its feedback.unavailable)
//     lessonId,         the lesson's id, from its `lesson` frame
//     resumes,          how many times a socket resumed the lesson (`lesson` frames with resumed: true)
//     reconnecting,     true while the page is reconnecting its own socket
//     reconnectDelays,  [ms] every pause the page scheduled before reopening a lost socket, in order
//     statuses,         every status state received, in order ("reconnecting:upstream" with a reason)
//     audioInterruptions, how many times the lesson's AudioContext stopped running (audio-interruptions.js)
//     microphoneRestarts, how many times a new microphone stream replaced one that ended
//     microphoneMutes, microphoneUnmutes   how many times the device muted and unmuted the microphone track
//   }
"use strict";

// Mirrors the relay's rule (app/messages.py): at most 5 words, 40 characters, each word letters joined by
// single hyphens or apostrophes, or initials with their dots ("J.", "J.R.R.").
const NAME_WORD = String.raw`(?:[\p{L}\p{M}]+(?:['’-][\p{L}\p{M}]+)*|(?:\p{L}\.)+)`;
const NAME_PATTERN = new RegExp(`^(?=.{1,40}$)${NAME_WORD}(?: ${NAME_WORD}){0,4}$`, "u");

const STATUS_TEXT = {
  idle: "Ready when you are.",
  starting: "Starting your microphone…",
  connecting: "Connecting to your tutor…",
  greeting: "Your tutor is saying hello…",
  waiting: "The tutor service is busy. Trying again in a moment…",
  tutor_speaking: "Your tutor is speaking.",
  listening: "Your turn — speak now.",
  ending: "Ending the lesson…",
  feedback: "Preparing your feedback…",
  ended: "The lesson has ended.",
  not_started: "The lesson did not start.",
  reconnecting: "Reconnecting…",
  "reconnecting:upstream": "Reconnecting to your tutor…",
  "reconnecting:server_restarting": "The lesson server is restarting. Reconnecting…",
  sound_off: "Your lesson is back. Press “Continue lesson” to turn the sound on.",
};

// What a close code means to a student, when no error frame said it better.
const CLOSE_MESSAGES = {
  1001: "The lesson server is restarting. Please start the lesson again.",
  1012: "The lesson server is restarting. Please start the lesson again.",
  1008: "This lesson could not start: please check your name and level, or ask for a new lesson link.",
  1009: "Something went wrong with the sound data. Please start the lesson again.",
  1011: "The lesson stopped because of a problem on our side. Please try again.",
  1013: "Too many lessons are running right now. Please try again in a minute.",
  1014: "The tutor is not available right now. Please try again in a few minutes.",
};
const DROPPED_MESSAGE = "The connection to your tutor was lost. Check your internet connection and try again.";
const NO_FEEDBACK_OFFLINE_MESSAGE =
  "The lesson has ended. There is no feedback this time: the connection was lost before the lesson could end.";
const FEEDBACK_LOST_OFFLINE_MESSAGE = "The lesson has ended, but the connection was lost before your feedback "
  + "arrived. Reload this page when you are back online to see it.";
// The relay's wait for the feedback is over and neither the feedback nor its absence was said: the relay may have
// it later, and the tab keeps the token for a reload to fetch it.
const FEEDBACK_OVERDUE_MESSAGE =
  "Your feedback is taking longer than expected. Reload this page in a minute to see it.";
// What a page back for its feedback is told on the card when the relay refuses it: the lesson's token expired
// (a tab restored hours later), or the lesson ended with no feedback to give.
const FEEDBACK_REFUSED_MESSAGES = new Map([
  ["resume_expired", "This lesson ended a while ago, and its feedback can no longer be shown here."],
  ["lesson_ended", "This lesson has ended, and there is no feedback for it."],
]);

const page = {
  root: document.querySelector("main"),
  form: document.getElementById("lesson-form"),
  name: document.getElementById("name"),
  level: document.getElementById("level"),
  start: document.getElementById("start"),
  end: document.getElementById("end"),
  mute: document.getElementById("mute"),
  status: document.getElementById("status"),
  error: document.getElementById("error"),
  errorMessage: document.getElementById("error-message"),
  retry: document.getElementById("retry"),
  resumeAudio: document.getElementById("resume-audio"),
  simulatedNotice: document.getElementById("simulated-notice"),
  transcript: document.getElementById("transcript"),
  turnAnnouncer: document.getElementById("turn-announcer"),
  usage: document.getElementById("usage"),
  feedback: document.getElementById("feedback"),
  feedbackStatus: document.getElementById("feedback-status"),
  feedbackCard: document.getElementById("feedback-card"),
};

// A past lesson's card is dated by the student's own calendar, not the server's (UTC): a lesson at 07:30 in Tokyo
// is on the server's day before. Without the script the UTC date stays.
const localDate = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "long", year: "numeric" });
for (const element of document.querySelectorAll("time[data-local-date]")) {
  const at = new Date(element.getAttribute("datetime"));
  if (!Number.isNaN(at.getTime())) element.textContent = localDate.format(at);
}

const debug = {
  state: "idle",
  socket: "closed",
  closeCode: null,
  contextRate: 0,
  framesSent: 0,
  paceDropped: 0,
  bytesSent: 0,
  frameBytes: 0,
  captureDropped: 0,
  received: {},
  played: {},
  finished: {},
  interrupted: [],
  durations: {},
  startLatencyMs: {},
  outputLatencyMs: 0,
  underruns: 0,
  errors: [],
  feedback: null,
  lessonId: null,
  resumes: 0,
  reconnecting: false,
  reconnectDelays: [],
  statuses: [],
  audioInterruptions: 0,
  microphoneRestarts: 0,
  microphoneMutes: 0,
  microphoneUnmutes: 0,
};
window.lessonDebug = debug;

function showState(state, reason) {
  debug.state = state;
  document.body.dataset.state = state;
  page.status.textContent = STATUS_TEXT[reason ? `${state}:${reason}` : state] ?? STATUS_TEXT[state] ?? state;
}

// Whether starting again can get past a refusal of this code: not the day's lesson time spent, nor a link's
// page refused its request (name and level come from the link, so the link itself was refused), nor a lesson
// the teacher withdrew or ended. The message says what to do instead.
const NO_RETRY_CODES = new Set(["daily_budget_reached", "link_revoked", "student_removed", "teacher_ended"]);

function retryCanHelp(code) {
  if (NO_RETRY_CODES.has(code)) return false;
  return !(code === "invalid_request" && page.root.dataset.locked === "true");
}

// Refusals after which this page's link starts no lesson at all (revoked, its student archived or deleted): its
// Start lesson stays off, rather than offer a start that can only be refused again. A teacher's end leaves the link
// working, and the day's lesson time comes back, so those keep it.
function linkNoLongerWorks(code) {
  if (code === "link_revoked" || code === "student_removed") return true;
  return code === "invalid_request" && page.root.dataset.locked === "true";
}
let linkWithdrawn = false;

function showError(message, canRetry) {
  page.errorMessage.textContent = message;
  page.retry.hidden = !canRetry;
  page.error.hidden = false;
  page.error.scrollIntoView({ block: "nearest" }); // on a phone it may start below the screen's edge
}

// A control hidden under the focus would drop it to the top of the page, as a disabled one would: the focus goes
// to the status line instead (see setLessonControls).
function hideKeepingFocus(element) {
  const hadFocus = element.contains(document.activeElement);
  element.hidden = true;
  if (hadFocus) page.status.focus();
}

function hideError() {
  hideKeepingFocus(page.error);
}

function setLessonControls(active) {
  const locked = page.root.dataset.locked === "true"; // fixed by a signed lesson link
  const focused = document.activeElement;
  page.start.disabled = active || linkWithdrawn;
  page.end.disabled = !active;
  page.mute.disabled = !active;
  page.name.readOnly = locked || active;
  // On a phone the form folds away while the lesson runs (lesson.css): the status and the live transcript fit
  // on the first screen. Unfolded at the end, it must not push an error or a feedback card already shown off it.
  const wasFolded = page.form.classList.contains("setup--in-lesson");
  page.form.classList.toggle("setup--in-lesson", active);
  if (wasFolded && !active) {
    [page.error, page.feedback].find((shown) => !shown.hidden)?.scrollIntoView({ block: "nearest" });
  }
  // A link's level is read-only text (lesson.html); the open page's level list is held while a lesson runs.
  if (!locked) page.level.disabled = active;
  // A control disabled under the focus drops it to the top of the page: the keyboard and the screen reader
  // go on from the status line instead, which says what happens next.
  if (focused?.disabled) page.status.focus();
}

function formatDuration(seconds) {
  const total = Math.round(seconds);
  const minutes = Math.floor(total / 60);
  return minutes > 0 ? `${minutes} min ${total % 60} s` : `${total} s`;
}


function readParams() {
  const name = page.name.value.trim().split(/ +/).join(" ");
  if (!NAME_PATTERN.test(name.normalize("NFC"))) {
    page.name.setCustomValidity(
      "Please type your name: at most 5 words of letters (a hyphen, an apostrophe or an initial's dot is fine).");
    page.name.reportValidity();
    return null;
  }
  page.name.setCustomValidity("");
  return { name, level: page.level.value, token: page.root.dataset.token || "", studentKey: studentKey() };
}

// Without a link, this browser's random key (kept in localStorage) makes its lessons one student's.
function studentKey() {
  try {
    let key = localStorage.getItem("lessonStudentKey");
    if (!key) {
      const bytes = crypto.getRandomValues(new Uint8Array(16));
      key = Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
      localStorage.setItem("lessonStudentKey", key);
    }
    return key;
  } catch {
    return ""; // storage blocked: the lesson goes on, recorded without a student
  }
}
