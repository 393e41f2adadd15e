// The lesson page: one WebSocket to the relay (docs/protocol.md), the microphone through
// capture-processor.js (native rate → PCM16 24 kHz frames), the tutor's voice through
// playback-processor.js (PCM16 24 kHz → speakers, with per-item played counts reported back). What the page
// shows, its words and its test hook `window.lessonDebug` are in lesson-page.js.
//
// window.lessonTestConfig, set before Start, is for tests and measurements only:
//   sampleRate   create the AudioContext at this rate (stand in for a 48 kHz or 44.1 kHz device);
//                without it the device's native rate is used
//   processing   false turns off echo cancellation, noise suppression and auto gain, so a
//                measurement sees the capture worklet's filter alone
//   audioStartTimeoutMs   how long the sound output may take to start (default AUDIO_START_TIMEOUT_MS)
"use strict";

const SOURCE_RATE = 24000;
// Set-up is bounded: a browser whose output device never starts leaves AudioContext.resume() pending forever
// (Firefox with no output device). Loading the worklets and starting the output involve no person.
const AUDIO_START_TIMEOUT_MS = 10000;
// The microphone waits for the student to answer the browser's permission prompt: a person's pace.
const MICROPHONE_TIMEOUT_MS = 60000;
// A lost socket is reopened after 0.5, 1, 2, 4, 4 … s, for as long as the relay keeps the lesson (its grace).
// Attempts stay close together to the end: a lesson whose server was killed can be taken over only once that
// server has been silent for INSTANCE_LOST_AFTER_SECONDS (15 s), halfway through the grace.
const RECONNECT_FIRST_MS = 500;
const RECONNECT_LONGEST_MS = 4000;
// How long past the feedback's `timeout_s` the page waits for it: the relay's answer may be on its way.
const FEEDBACK_MARGIN_MS = 5000;
// A page back for its feedback after a reload keeps trying at least this long: a lesson whose server was killed
// is answered "not yet" until another can take it over (INSTANCE_LOST_AFTER_SECONDS, 15 s).
const COME_BACK_RETRY_MS = 20000;
// A part of the audio set-up that did not finish in time.
class SetupTimeout extends Error {
  constructor(part) {
    super(`${part} did not start in time`);
    this.name = "SetupTimeout";
    this.part = part;
  }
}

// `promise`, or a SetupTimeout for `part` once `ms` have passed without it settling.
function withDeadline(promise, ms, part) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new SetupTimeout(part)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

// The relay takes the microphone at up to 1.2 × real time with 1 s ahead to spare, and refuses the rest as
// `audio_too_fast` (app/pacing.py). A browser whose sound restarts may hand over a backlog at once (WebKit: about
// 0.6 s after a resume), which a slow network bunches further: the page sends at most 1.1 × real time (clock
// drift) with half a second ahead to spare, and drops the rest of such a burst, stale sound the student never meant.
const MICROPHONE_BYTES_PER_S = SOURCE_RATE * 2;
const MICROPHONE_PACE = 1.1;
const MICROPHONE_AHEAD_S = 0.5;

class MicrophonePace {
  constructor() {
    this.capacity = MICROPHONE_AHEAD_S * MICROPHONE_BYTES_PER_S;
    this.bytes = this.capacity;
    this.updatedAtMs = null;
  }

  // Whether `size` bytes may be sent at `nowMs` (spending them), or must be dropped.
  take(size, nowMs) {
    if (this.updatedAtMs !== null) {
      const earned = ((nowMs - this.updatedAtMs) / 1000) * MICROPHONE_PACE * MICROPHONE_BYTES_PER_S;
      this.bytes = Math.min(this.capacity, this.bytes + earned);
    }
    this.updatedAtMs = nowMs;
    if (size > this.bytes) return false;
    this.bytes -= size;
    return true;
  }
}

const transcript = new Transcript(page.transcript, page.turnAnnouncer);

const feedbackCard = new FeedbackCard(page.feedback, page.feedbackStatus, page.feedbackCard);

// One lesson: its audio graph and its socket. stop() releases everything and is safe to repeat.
class Lesson {
  // `resume`: {token, graceMs, awaitingFeedback, feedbackUntil} of a lesson this tab had before a reload; the
  // relay then sends its transcript (and, when it was ending, its feedback).
  constructor(params, resume = null) {
    this.params = params;
    this.resumeToken = resume?.token ?? null;
    this.graceMs = resume?.graceMs ?? 0;
    this.replay = resume !== null;
    this.accepted = resume !== null; // the relay took the lesson: its `lesson` frame came
    this.lostAt = null;
    this.attempt = 0;
    this.reconnectTimer = null;
    this.socket = null;
    this.context = null;
    this.stream = null;
    this.source = null;
    this.capture = null;
    this.playback = null;
    this.microphonePace = new MicrophonePace();
    this.interruptions = null;
    this.muted = false;
    this.currentItem = null;
    this.interrupted = new Set();
    this.firstFrameTime = new Map();
    this.serverEnded = false;
    this.fatalError = false;
    this.ending = resume?.awaitingFeedback === true;
    this.endOnOpen = false; // End was pressed while no socket was open: it is sent once one is
    // [Date.now() ms] once the relay prepares the feedback: waited for until then
    this.feedbackUntil = this.ending ? Math.max(resume.feedbackUntil ?? 0, Date.now() + COME_BACK_RETRY_MS) : null;
    this.stopped = false;
    this.closeTimer = null;
  }

  // Must run synchronously inside the Start click: Safari only lets a gesture create/resume audio.
  start() {
    const rate = window.lessonTestConfig?.sampleRate;
    this.context = new AudioContext(rate ? { sampleRate: rate, latencyHint: "interactive" } : { latencyHint: "interactive" });
    const resumed = this.context.resume();
    if (this.socket === null) showState("starting");
    hideKeepingFocus(page.resumeAudio);
    this.setUp(resumed).catch((error) => this.failToStart(error));
  }

  // After a reload: the lesson resumes at once (its transcript comes back); the sound needs a click first.
  resumeWithoutSound() {
    this.open();
    page.resumeAudio.hidden = false;
  }

  // After a reload while the feedback was being written: no sound, the transcript and the feedback come back.
  comeBackForFeedback() {
    feedbackCard.pending();
    this.open();
  }

  async setUp(resumed) {
    const context = this.context;
    const audioStartMs = window.lessonTestConfig?.audioStartTimeoutMs ?? AUDIO_START_TIMEOUT_MS;
    const output = Promise.all([
      resumed,
      context.audioWorklet.addModule("/static/audio/capture-processor.js"),
      context.audioWorklet.addModule("/static/audio/playback-processor.js"),
    ]);
    const [stream] = await Promise.all([
      withDeadline(this.openMicrophone(), MICROPHONE_TIMEOUT_MS, "microphone"),
      withDeadline(output, audioStartMs, "output"),
    ]);
    if (this.stopped) return; // stop() has released the stream
    debug.contextRate = context.sampleRate;
    debug.outputLatencyMs = ((context.baseLatency || 0) + (context.outputLatency || 0)) * 1000;

    this.source = context.createMediaStreamSource(stream);
    this.capture = new AudioWorkletNode(context, "capture-processor", { numberOfInputs: 1, numberOfOutputs: 0 });
    this.capture.port.onmessage = (event) => this.onCaptureMessage(event.data);
    this.source.connect(this.capture);

    this.playback = new AudioWorkletNode(context, "playback-processor", {
      numberOfInputs: 0,
      numberOfOutputs: 1,
      outputChannelCount: [1],
    });
    this.playback.port.onmessage = (event) => this.onPlaybackMessage(event.data);
    this.playback.connect(context.destination);
    this.interruptions = new AudioInterruptions(this, debug);

    if (this.socket === null && this.reconnectTimer === null) this.open();
  }

  // The microphone stream, held by the lesson the moment it is granted, so that every exit releases it,
  // even one taken while the rest of the set-up is still pending.
  async openMicrophone() {
    const stream = await navigator.mediaDevices.getUserMedia(microphoneConstraints());
    if (this.stopped) {
      for (const track of stream.getTracks()) track.stop(); // granted after the lesson ended
    } else {
      this.stream = stream;
    }
    return stream;
  }

  failToStart(error) {
    if (this.stopped) return; // ended or replaced while starting
    this.stop();
    const blocked = error && (error.name === "NotAllowedError" || error.name === "SecurityError");
    const missing = error && (error.name === "NotFoundError" || error.name === "OverconstrainedError");
    const timedOut = error instanceof SetupTimeout;
    const message = blocked
      ? "The page may not use your microphone. Allow microphone access in your browser, then try again."
      : missing
        ? "No microphone was found. Connect one, then try again."
        : timedOut && error.part === "output"
          ? "Your speakers or headphones did not start. Check that they are connected and not in use by another app, then try again."
          : timedOut
            ? "The microphone did not start. Allow the page to use it when your browser asks, then try again."
            : "Your browser could not start the lesson audio. Please try again, or use an up-to-date browser.";
    showState("idle");
    showError(message, true);
    setLessonControls(false);
  }

  open() {
    this.reconnectTimer = null;
    const query = new URLSearchParams();
    if (this.resumeToken) {
      query.set("resume", this.resumeToken);
      if (this.replay) query.set("replay", "1");
    } else {
      query.set("name", this.params.name);
      query.set("level", this.params.level);
      if (this.params.token) query.set("token", this.params.token);
      else if (this.params.studentKey) query.set("student_key", this.params.studentKey);
    }
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${location.host}/ws/lesson?${query}`);
    socket.binaryType = "arraybuffer";
    // A socket this lesson has let go of (lost, replaced) may still deliver: only the current one counts.
    socket.onopen = () => {
      if (this.isCurrent() && socket === this.socket) debug.socket = "open";
    };
    socket.onmessage = (event) => {
      if (socket !== this.socket) return;
      if (typeof event.data === "string") this.onControl(JSON.parse(event.data));
      else this.onAudio(event.data);
    };
    socket.onclose = (event) => {
      if (socket === this.socket) this.onClose(event);
    };
    this.socket = socket;
    if (this.lostAt === null && !this.replay) showState("connecting");
  }

  // The socket is gone but the lesson is not: open a new one after 0.5, 1, 2, 4, 4 … s, within the grace.
  reconnect() {
    if (this.lostAt === null) {
      this.lostAt = Date.now();
      this.attempt = 0;
      // The relay cut the tutor where the student stopped hearing it: what is still queued must not play.
      this.currentItem = null;
      this.playback?.port.postMessage({ type: "flush" });
    }
    this.socket = null;
    debug.socket = "closed";
    debug.reconnecting = true;
    const left = this.resumableUntil() - Date.now();
    if (left <= 0) {
      this.giveUp();
      return;
    }
    if (debug.state !== "reconnecting") showState("reconnecting");
    const delay = Math.min(RECONNECT_FIRST_MS * 2 ** this.attempt, RECONNECT_LONGEST_MS, left);
    this.attempt += 1;
    debug.reconnectDelays.push(delay);
    // While the browser knows it is offline an attempt cannot succeed: the `online` event tries at once.
    this.reconnectTimer = setTimeout(() => (navigator.onLine === false ? this.reconnect() : this.open()), delay);
  }

  // Whether a lost socket is worth reopening: the lesson may be resumed, and it is not ending anyway, or it is
  // ending and what the student asked for (the end, or the feedback it brings) is still to come.
  canResume() {
    const waited = this.feedbackUntil !== null || this.graceMs > 0;
    return Boolean(this.resumeToken) && waited && !this.stopped
      && (!this.ending || this.endOnOpen || this.feedbackUntil !== null) && Date.now() < this.resumableUntil();
  }

  // Until when a lost socket may be reopened. The relay keeps a lesson waiting for its feedback to the feedback's
  // deadline, whatever its grace for a page that left.
  resumableUntil() {
    if (this.feedbackUntil !== null) return this.feedbackUntil;
    return this.lostAt === null ? Infinity : this.lostAt + this.graceMs;
  }

  // The network came back: try at once instead of waiting out the pause.
  retryNow() {
    if (this.reconnectTimer === null) return;
    clearTimeout(this.reconnectTimer);
    this.open();
  }

  // The network went away: this socket will deliver nothing more; let it go and reconnect.
  dropSocket() {
    const socket = this.socket;
    if (socket === null || !this.canResume()) return;
    this.socket = null;
    socket.close(4000, "offline");
    this.reconnect();
  }

  // The grace is over and no socket got through: the lesson is lost. A lesson that was ending is not: the relay
  // keeps its feedback, and the tab keeps its token for a reload to fetch it; `feedbackMessage` says so.
  giveUp(feedbackMessage = FEEDBACK_LOST_OFFLINE_MESSAGE) {
    debug.reconnecting = false;
    if (this.feedbackUntil === null) resumeStore.forget();
    this.stop();
    if (!this.isCurrent()) return;
    debug.closeCode = 1006;
    setLessonControls(false);
    showState("ended");
    if (this.feedbackUntil !== null) feedbackCard.unavailable(feedbackMessage);
    else if (this.endOnOpen) feedbackCard.unavailable(NO_FEEDBACK_OFFLINE_MESSAGE);
    else showError(DROPPED_MESSAGE, true);
  }

  isCurrent() {
    return lesson === this;
  }

  send(message) {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(message));
  }

  onCaptureMessage(message) {
    if (message.type !== "frame") return;
    const buffer = message.buffer;
    // The relay drops frames until the greeting was heard; sending from the start keeps it simple.
    if (this.socket?.readyState === WebSocket.OPEN) {
      if (this.microphonePace.take(buffer.byteLength, performance.now())) {
        this.socket.send(buffer);
        debug.framesSent += 1;
        debug.bytesSent += buffer.byteLength;
        debug.frameBytes = buffer.byteLength;
      } else {
        debug.paceDropped += 1;
      }
    }
    debug.captureDropped = message.dropped;
    // send() has copied the bytes: the worklet may refill this buffer.
    this.capture?.port.postMessage({ type: "recycle", buffer }, [buffer]);
  }

  onAudio(buffer) {
    const item = this.currentItem;
    if (item === null || this.interrupted.has(item) || this.playback === null) return;
    if (!this.firstFrameTime.has(item)) this.firstFrameTime.set(item, performance.now());
    debug.received[item] = (debug.received[item] ?? 0) + (buffer.byteLength >> 1);
    this.playback.port.postMessage({ type: "samples", buffer }, [buffer]);
  }

  onPlaybackMessage(message) {
    if (message.type === "started") {
      const arrived = this.firstFrameTime.get(message.item_id);
      if (arrived !== undefined && this.context?.getOutputTimestamp) {
        // Map the worklet's context time of the first sample onto the page clock at the output.
        const stamp = this.context.getOutputTimestamp();
        const audible = stamp.performanceTime + (message.time - stamp.contextTime) * 1000;
        debug.startLatencyMs[message.item_id] = audible - arrived;
      }
    } else if (message.type === "played") {
      debug.played[message.item_id] = message.samples;
      if (message.done) debug.finished[message.item_id] = message.samples;
      debug.underruns = message.underruns;
      const ms = (message.samples * 1000) / SOURCE_RATE;
      // A finished item reports its full length rounded up, so it is never short of duration_ms.
      this.send({ type: "playback", item_id: message.item_id, played_ms: message.done ? Math.ceil(ms) : Math.floor(ms) });
    }
  }

  onControl(message) {
    if (message.type !== "transcript.done") transcript.quiet = false;
    switch (message.type) {
      case "lesson":
        if (message.simulated && page.simulatedNotice) page.simulatedNotice.hidden = false;
        // After a reload the relay sends every turn so far (`replay`), right after this frame.
        transcript.quiet = Boolean(message.resumed && this.replay);
        debug.lessonId = message.lesson_id;
        this.accepted = true;
        this.resumeToken = message.resume_token || null;
        this.graceMs = (message.resume_grace_s ?? 0) * 1000;
        if (message.resumed) {
          debug.resumes += 1;
          this.replay = false;
          this.lostAt = null;
          this.attempt = 0;
          debug.reconnecting = false;
          hideError();
        }
        if (this.endOnOpen) {
          this.endOnOpen = false;
          this.sendEnd();
        } else if (this.resumeToken && !this.ending) {
          resumeStore.save(this);
        }
        break;
      case "status":
        debug.statuses.push(message.reason ? `${message.state}:${message.reason}` : message.state);
        if (message.state === "ended") {
          this.serverEnded = true;
          resumeStore.forget();
        }
        if (message.state === "feedback") this.awaitFeedback(message.timeout_s);
        if (!this.ending || message.state === "ended" || message.state === "feedback") {
          const state = message.state === "ended" ? this.endedState() : message.state;
          showState(state, message.state === "reconnecting" ? message.reason : undefined);
          if (!page.resumeAudio.hidden && message.state === "listening") showState("sound_off");
        }
        break;
      case "feedback":
        debug.feedback = message;
        feedbackCard.show(message);
        break;
      case "feedback.unavailable":
        debug.feedback = message;
        feedbackCard.unavailable(message.message);
        break;
      case "audio.start":
        this.currentItem = message.item_id;
        this.playback?.port.postMessage({ type: "item", item_id: message.item_id });
        break;
      case "audio.done":
        debug.durations[message.item_id] = message.duration_ms;
        this.playback?.port.postMessage({ type: "end", item_id: message.item_id });
        break;
      case "audio.interrupt":
        // The student is talking: what the tutor had still queued must stop at once.
        this.interrupted.add(message.item_id);
        debug.interrupted.push(message.item_id);
        this.playback?.port.postMessage({ type: "flush" });
        break;
      case "transcript.delta":
        transcript.delta(message.role, message.item_id, message.text);
        break;
      case "transcript.done":
        transcript.done(message.role, message.item_id, message.text, message.interrupted === true);
        break;
      case "usage":
        debug.usage = message;
        page.usage.textContent = `Lesson length: ${formatDuration(message.duration_s)}.`;
        page.usage.hidden = false;
        break;
      case "error":
        debug.errors.push({ code: message.code, message: message.message, fatal: message.fatal });
        if (message.fatal) {
          this.fatalError = true;
          if (linkNoLongerWorks(message.code)) linkWithdrawn = true;
          resumeStore.forget();
          // A feedback still to come follows its own frames (a teacher's end comes first); a refusal has none.
          feedbackCard.withdraw();
        }
        // A page back for its feedback that cannot have it is told so on the card; a resume refused for now
        // (another server is taking the lesson over) is retried, not shown.
        if (this.ending && FEEDBACK_REFUSED_MESSAGES.has(message.code)) {
          const history = document.getElementById("history-title") ? " Your last lessons are listed below." : "";
          feedbackCard.unavailable(FEEDBACK_REFUSED_MESSAGES.get(message.code) + history);
        } else if (message.fatal || !(message.code === "resume_not_yet" && this.canResume())) {
          showError(message.message, message.fatal && retryCanHelp(message.code));
        }
        break;
    }
  }

  onClose(event) {
    const expected = this.stopped || (this.serverEnded && !this.fatalError && event.code === 1000);
    if (!expected && !this.serverEnded && !this.fatalError && this.canResume()) {
      this.reconnect();
      return;
    }
    this.stop();
    if (!this.isCurrent()) return; // a replaced lesson closing late must not touch the page
    debug.reconnecting = false;
    debug.socket = "closed";
    debug.closeCode = event.code;
    setLessonControls(false);
    showState(this.endedState());
    if (expected || this.fatalError) return;
    feedbackCard.withdraw();
    showError(CLOSE_MESSAGES[event.code] ?? DROPPED_MESSAGE, true);
  }

  // A refused start never was a lesson: the status says it did not start rather than that it ended.
  endedState() {
    return this.accepted ? "ended" : "not_started";
  }

  // The lesson is over and its feedback is on its way: nothing more to hear or say; the relay closes once
  // the feedback came or its timeout passed.
  awaitFeedback(timeoutSeconds) {
    this.ending = true;
    this.releaseAudio();
    setLessonControls(false);
    feedbackCard.pending();
    clearTimeout(this.closeTimer);
    const waitMs = (Number.isFinite(timeoutSeconds) ? timeoutSeconds : 20) * 1000 + FEEDBACK_MARGIN_MS;
    this.feedbackUntil = Date.now() + waitMs;
    if (this.resumeToken) resumeStore.save(this);
    // Past the wait, a socket still open or still being reopened will not bring the feedback either.
    const overdue = () => this.giveUp(this.lostAt === null ? FEEDBACK_OVERDUE_MESSAGE : FEEDBACK_LOST_OFFLINE_MESSAGE);
    this.closeTimer = setTimeout(overdue, waitMs);
  }

  // End lesson: ask the relay to finish (it answers with usage and status ended, then closes). While the
  // socket is still opening or the network is away, the relay still has the lesson: End is sent once the
  // socket is back, so the lesson ends as the student asked, with its feedback.
  end() {
    this.ending = true;
    resumeStore.forget();
    this.releaseAudio();
    if (this.socket?.readyState === WebSocket.OPEN) {
      this.sendEnd();
    } else if (this.socket?.readyState === WebSocket.CONNECTING || this.lostAt !== null) {
      this.endOnOpen = true;
      showState("ending");
    } else {
      this.stop();
      showState("ended");
    }
  }

  sendEnd() {
    this.send({ type: "end" });
    showState("ending");
    // If the relay never closes, close from this side.
    this.closeTimer = setTimeout(() => this.stop(), 3000);
  }

  // pagehide (a reload, or the tab closing): the lesson is kept for the grace period, for this tab to resume.
  leave() {
    if (this.canResume() && !this.serverEnded) resumeStore.left();
    else this.send({ type: "end" });
    this.stop();
  }

  releaseAudio() {
    // No sound is coming back to start; a lesson let go (left, replaced) leaves the button to the one on the page.
    if (this.isCurrent() && !page.resumeAudio.hidden) hideKeepingFocus(page.resumeAudio);
    this.interruptions?.release();
    for (const track of this.stream?.getTracks() ?? []) track.stop();
    this.source?.disconnect();
    this.capture?.disconnect();
    this.playback?.disconnect();
    if (this.capture) this.capture.port.onmessage = null;
    if (this.playback) this.playback.port.onmessage = null;
    this.context?.close().catch(() => {});
    this.interruptions = this.stream = this.source = this.capture = this.playback = this.context = null;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.closeTimer);
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.releaseAudio();
    if (this.socket && this.socket.readyState <= WebSocket.OPEN) this.socket.close(1000, "lesson ended");
  }

  setMuted(muted) {
    this.muted = muted;
    for (const track of this.stream?.getAudioTracks() ?? []) track.enabled = !muted;
  }
}

let lesson = null;

// What a lesson starts from: no error, transcript, feedback, lesson time or mute left from an earlier one.
function clearLessonView() {
  hideError();
  transcript.clear();
  feedbackCard.clear();
  page.usage.hidden = true;
  page.mute.setAttribute("aria-pressed", "false");
}

function startLesson() {
  const params = readParams();
  if (params === null) return;
  resumeStore.forget();
  lesson?.stop();
  clearLessonView();
  setLessonControls(true);
  lesson = new Lesson(params);
  lesson.start();
}

page.form.addEventListener("submit", (event) => {
  event.preventDefault();
  startLesson();
});
page.retry.addEventListener("click", startLesson);
page.resumeAudio.addEventListener("click", () => lesson?.start());
window.addEventListener("offline", () => lesson?.dropSocket());
window.addEventListener("online", () => lesson?.retryNow());
page.end.addEventListener("click", () => {
  lesson?.end();
  setLessonControls(false);
  // End waits for the socket to come back: a new start now would drop this lesson unended, without its feedback.
  if (lesson?.endOnOpen) page.start.disabled = true;
});
// A toggle: its name stays "Mute microphone" and aria-pressed (styled as pressed) says whether it is on, so a
// screen reader never hears "Unmute microphone, pressed".
page.mute.addEventListener("click", () => {
  const muted = page.mute.getAttribute("aria-pressed") !== "true";
  page.mute.setAttribute("aria-pressed", String(muted));
  lesson?.setMuted(muted);
});
page.name.addEventListener("input", () => page.name.setCustomValidity(""));
window.addEventListener("pagehide", () => lesson?.leave());
showState("idle");

// A reload within the grace: the lesson this tab had goes on, its transcript sent back by the relay. A lesson
// that was ending comes back for its feedback at any later reload of this tab: the relay keeps it for the token.
function resumeAfterReload() {
  const saved = resumeStore.load();
  const awaitingFeedback = saved?.awaitingFeedback === true;
  const withinGrace = saved?.leftAt !== undefined && Date.now() - saved.leftAt < saved.graceMs;
  if (saved === null || !(awaitingFeedback || withinGrace)) {
    resumeStore.forget();
    return;
  }
  clearLessonView(); // a page back from the back-forward cache still shows the lesson it let go
  if (page.root.dataset.locked !== "true") {
    page.name.value = saved.name;
    page.level.value = saved.level;
  }
  setLessonControls(!awaitingFeedback);
  lesson = new Lesson({ name: saved.name, level: saved.level, token: page.root.dataset.token || "" },
    { token: saved.token, graceMs: saved.graceMs, awaitingFeedback, feedbackUntil: saved.feedbackUntil });
  showState("reconnecting");
  if (awaitingFeedback) lesson.comeBackForFeedback();
  else lesson.resumeWithoutSound();
}
resumeAfterReload();
// A page left and then brought back by Back or Forward may come from the back-forward cache (WebKit keeps it
// there) as it was, this script not run again: its lesson, let go on pagehide, is taken up as after a reload.
window.addEventListener("pageshow", (event) => {
  if (event.persisted) resumeAfterReload();
});
