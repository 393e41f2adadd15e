"use strict";

// A running lesson's sound through the browser taking it away. Loaded before lesson.js, which uses
// `microphoneConstraints` and `AudioInterruptions`.
// - The AudioContext stops running: iOS moves it to "suspended" or WebKit's "interrupted" for a phone call,
//   Siri, an alarm or a locked screen; Chrome on Android suspends it in the background. Its worklets stop, so
//   the tutor goes quiet and no microphone frame is sent. resume() is tried at once; Safari allows it only
//   inside a gesture after an interruption, so when the context is still not running RESUME_WAIT_MS later a
//   button resumes the same context in its click.
// - The microphone track ends (another app took the microphone, a headset was unplugged, the permission was
//   revoked): a button asks for the microphone again in its click and feeds the new stream to the same
//   capture worklet.
// - The device mutes the microphone track: iOS does during a phone call or Siri (the track goes on, muted, and
//   gives silence), and Android browsers may when another app takes the audio focus. The page says it is paused
//   until the track is unmuted; the browser does that on its own, so there is no button. The relay is told
//   nothing: it hears silence, as in any pause, and a pause longer than IDLE_TIMEOUT_SECONDS ends the lesson
//   as any silence does.

// How long an automatic resume() may take before the student is asked to press Continue.
const RESUME_WAIT_MS = 500;

const SOUND_PAUSED_MESSAGE = "The sound was paused. Press “Continue lesson” to go on.";
const MICROPHONE_STOPPED_MESSAGE =
  "Your microphone stopped: another app may be using it, or it was unplugged. Press “Turn the microphone back on” to go on.";
const MICROPHONE_REFUSED_MESSAGE =
  "The page may not use your microphone. Allow microphone access in your browser, then press “Turn the microphone back on”.";
const MICROPHONE_MISSING_MESSAGE = "No microphone was found. Connect one, then press “Turn the microphone back on”.";
const MICROPHONE_FAILED_MESSAGE = "The microphone did not start. Check it is connected, then press “Turn the microphone back on”.";
const MICROPHONE_PAUSED_MESSAGE = "Your microphone is paused by your device (a call?). The lesson continues when it is back.";

// What the lesson asks getUserMedia for, at its start and whenever the microphone is asked for again.
function microphoneConstraints() {
  const processing = window.lessonTestConfig?.processing ?? true;
  return {
    audio: { channelCount: 1, echoCancellation: processing, noiseSuppression: processing, autoGainControl: processing },
  };
}

// Watches one lesson's AudioContext and microphone from the end of its audio set-up until release().
// `lesson` supplies context, stream, capture and muted; `debug` is the page's test hook.
class AudioInterruptions {
  constructor(lesson, debug) {
    this.lesson = lesson;
    this.debug = debug;
    this.context = lesson.context;
    this.resumeTimer = null;
    this.interrupted = false;
    this.watchedTracks = [];
    this.mutedTracks = new Set();
    this.soundPaused = document.getElementById("sound-paused");
    this.soundPausedMessage = document.getElementById("sound-paused-message");
    this.continueSound = document.getElementById("continue-sound");
    this.microphoneStopped = document.getElementById("microphone-stopped");
    this.microphoneStoppedMessage = document.getElementById("microphone-stopped-message");
    this.restartMicrophone = document.getElementById("restart-microphone");
    this.microphonePaused = document.getElementById("microphone-paused");
    this.microphonePausedMessage = document.getElementById("microphone-paused-message");

    this.onStateChange = () => this.checkContext();
    this.onVisibilityChange = () => {
      if (document.visibilityState === "visible") this.checkContext();
    };
    this.onTrackEnded = () => this.microphoneEnded();
    this.onTrackMute = (event) => this.microphoneMuted(event.target);
    this.onTrackUnmute = (event) => this.microphoneUnmuted(event.target);
    this.onContinueClick = () => this.resumeInGesture();
    this.onRestartClick = () => this.reopenMicrophone();
    this.context.addEventListener("statechange", this.onStateChange);
    document.addEventListener("visibilitychange", this.onVisibilityChange);
    this.continueSound.addEventListener("click", this.onContinueClick);
    this.restartMicrophone.addEventListener("click", this.onRestartClick);
    this.watchTracks(lesson.stream);
    this.checkContext(); // the context may have stopped while the set-up finished
  }

  // The lesson's audio is over (ended, replaced, left): nothing more is watched or shown.
  release() {
    clearTimeout(this.resumeTimer);
    this.context.removeEventListener("statechange", this.onStateChange);
    document.removeEventListener("visibilitychange", this.onVisibilityChange);
    this.continueSound.removeEventListener("click", this.onContinueClick);
    this.restartMicrophone.removeEventListener("click", this.onRestartClick);
    this.unwatchTracks();
    this.hide(this.soundPaused);
    this.hide(this.microphoneStopped);
  }

  checkContext() {
    const context = this.context;
    if (context.state === "running") {
      clearTimeout(this.resumeTimer);
      this.resumeTimer = null;
      this.interrupted = false;
      this.hide(this.soundPaused);
      return;
    }
    if (context.state === "closed") return;
    if (!this.interrupted) {
      this.interrupted = true;
      this.debug.audioInterruptions += 1;
    }
    // Safari leaves a resume() outside a gesture pending: the button below is the way back then.
    context.resume().catch(() => {});
    if (this.resumeTimer === null && this.soundPaused.hidden) {
      this.resumeTimer = setTimeout(() => {
        this.resumeTimer = null;
        if (context.state !== "running") this.ask(this.soundPaused, this.soundPausedMessage, SOUND_PAUSED_MESSAGE, this.continueSound);
      }, RESUME_WAIT_MS);
    }
  }

  // Must run synchronously inside the click: the same context, resumed by the student's gesture. The
  // statechange to "running" hides the button.
  resumeInGesture() {
    this.context.resume().catch(() => {});
  }

  microphoneEnded() {
    this.unwatchTracks();
    this.ask(this.microphoneStopped, this.microphoneStoppedMessage, MICROPHONE_STOPPED_MESSAGE, this.restartMicrophone);
  }

  // getUserMedia must be called inside the click: Safari asks again only from a gesture. The button stays
  // usable while the browser asks, in case its prompt never answers; a later stream replaces an earlier one.
  reopenMicrophone() {
    navigator.mediaDevices.getUserMedia(microphoneConstraints()).then(
      (stream) => this.connectMicrophone(stream),
      (error) => this.microphoneRefused(error),
    );
  }

  // Whether the lesson's audio is still the one watched (not released while the browser was asking).
  isWatching() {
    return this.lesson.context === this.context && this.lesson.capture !== null;
  }

  connectMicrophone(stream) {
    const lesson = this.lesson;
    if (!this.isWatching()) {
      for (const track of stream.getTracks()) track.stop(); // granted after the lesson's audio was released
      return;
    }
    for (const track of lesson.stream?.getTracks() ?? []) track.stop();
    lesson.source?.disconnect();
    lesson.stream = stream;
    lesson.source = this.context.createMediaStreamSource(stream);
    lesson.source.connect(lesson.capture);
    lesson.setMuted(lesson.muted);
    this.watchTracks(stream);
    this.hide(this.microphoneStopped);
    this.debug.microphoneRestarts += 1;
  }

  microphoneRefused(error) {
    if (!this.isWatching()) return;
    const blocked = error?.name === "NotAllowedError" || error?.name === "SecurityError";
    const missing = error?.name === "NotFoundError" || error?.name === "OverconstrainedError";
    const message = blocked ? MICROPHONE_REFUSED_MESSAGE : missing ? MICROPHONE_MISSING_MESSAGE : MICROPHONE_FAILED_MESSAGE;
    this.ask(this.microphoneStopped, this.microphoneStoppedMessage, message, this.restartMicrophone);
  }

  // A track the device muted is said to be paused until it is unmuted, or stops being watched (it ended, the
  // lesson's audio was released). Told by the events rather than `track.muted`: each mute ends with an unmute.
  microphoneMuted(track) {
    if (this.mutedTracks.has(track)) return;
    this.mutedTracks.add(track);
    this.debug.microphoneMutes += 1;
    this.sayWhetherMicrophonePaused();
  }

  microphoneUnmuted(track) {
    if (!this.mutedTracks.delete(track)) return;
    this.debug.microphoneUnmutes += 1;
    this.sayWhetherMicrophonePaused();
  }

  sayWhetherMicrophonePaused() {
    const paused = this.mutedTracks.size > 0;
    if (paused === !this.microphonePaused.hidden) return;
    // Shown, then filled: the live region announces what changes in it once it is in the page.
    this.microphonePaused.hidden = !paused;
    this.microphonePausedMessage.textContent = paused ? MICROPHONE_PAUSED_MESSAGE : "";
  }

  watchTracks(stream) {
    for (const track of stream?.getAudioTracks() ?? []) {
      track.addEventListener("ended", this.onTrackEnded);
      track.addEventListener("mute", this.onTrackMute);
      track.addEventListener("unmute", this.onTrackUnmute);
      this.watchedTracks.push(track);
      if (track.muted) this.microphoneMuted(track); // muted already: a call went on while it was asked for
    }
  }

  unwatchTracks() {
    for (const track of this.watchedTracks) {
      track.removeEventListener("ended", this.onTrackEnded);
      track.removeEventListener("mute", this.onTrackMute);
      track.removeEventListener("unmute", this.onTrackUnmute);
    }
    this.watchedTracks = [];
    this.mutedTracks.clear();
    this.sayWhetherMicrophonePaused();
  }

  // Shows `panel` saying `text`, with the focus on the `button` that fixes it.
  ask(panel, messageElement, text, button) {
    messageElement.textContent = text;
    panel.hidden = false;
    button.focus();
  }

  // Hides `panel`. Its button, pressed, goes from under the focus: the focus moves to the lesson's status line
  // rather than to the top of the page.
  hide(panel) {
    const hadFocus = panel.contains(document.activeElement);
    panel.hidden = true;
    if (hadFocus) document.getElementById("status").focus();
  }
}
