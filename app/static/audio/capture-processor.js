// Microphone capture: the context's native rate (48 kHz, 44.1 kHz, 16 kHz, …) in, PCM16 LE mono
// 24 kHz frames out, as the relay protocol requires (docs/protocol.md). We resample here instead of
// asking for a 24 kHz AudioContext, which Firefox refuses to connect to a microphone.
//
// Resampler: rational polyphase FIR. The rate ratio is reduced to up/down = L/M (44.1 kHz → 80/147,
// 48 kHz → 1/2); one Kaiser-windowed sinc prototype at L × the input rate is split into L phases of
// `taps` coefficients. Stop band starts at the lower Nyquist (12 kHz for 24 kHz out) with ~100 dB
// attenuation, so nothing above 12 kHz folds back into the speech band.
//
// Port messages:
//   out {type: "frame", buffer}   an ArrayBuffer of `frameSamples` Int16 samples, transferred
//   in  {type: "recycle", buffer} hand a sent frame's buffer back; process() never allocates, so
//                                 frames come from a fixed pool that the main thread refills
// When the pool is empty (main thread stalled for longer than the pool lasts) samples are dropped
// and counted in the next frame message's `dropped`.

const OUTPUT_RATE = 24000;
const FRAME_MS = 20;
const POOL_SIZE = 32;
const STOPBAND_DB = 100;
// Pass band ends at 87.5 % of the lower Nyquist: 10.5 kHz for 24 kHz out, well above speech energy.
const PASS_FRACTION = 0.875;
const MAX_BLOCK = 4096;
// A block's length when there is no input to take it from (Web Audio's render quantum).
const RENDER_QUANTUM = 128;

function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return a;
}

// Zeroth-order modified Bessel function of the first kind, for the Kaiser window.
function besselI0(x) {
  let sum = 1;
  let term = 1;
  for (let k = 1; k < 50; k++) {
    term *= (x / (2 * k)) ** 2;
    sum += term;
    if (term < sum * 1e-12) break;
  }
  return sum;
}

// Phase-major coefficients: coefficients[phase * taps + k] multiplies x[n - k].
function designPolyphase(inputRate, up, down) {
  const stopHz = Math.min(inputRate, OUTPUT_RATE) / 2;
  const passHz = stopHz * PASS_FRACTION;
  const transition = (2 * Math.PI * (stopHz - passHz)) / inputRate;
  // Kaiser's estimates for the window shape and the length (in input samples) per phase.
  const beta = 0.1102 * (STOPBAND_DB - 8.7);
  const taps = Math.ceil((STOPBAND_DB - 8) / (2.285 * transition)) + 1;
  const length = taps * up;
  const cutoff = (passHz + stopHz) / 2 / (inputRate * up); // cycles per prototype sample
  const centre = (length - 1) / 2;
  const i0Beta = besselI0(beta);
  const coefficients = new Float32Array(length);
  for (let j = 0; j < length; j++) {
    const t = j - centre;
    const sinc = t === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * t) / (Math.PI * t);
    const r = t / centre;
    const window = besselI0(beta * Math.sqrt(Math.max(0, 1 - r * r))) / i0Beta;
    // × up: zero-stuffing by `up` divides the gain by `up`.
    const phase = j % up;
    coefficients[phase * taps + Math.floor(j / up)] = sinc * window * up;
  }
  return { coefficients, taps };
}

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    const inputRate = sampleRate;
    const divisor = gcd(OUTPUT_RATE, inputRate);
    this.up = OUTPUT_RATE / divisor;
    this.down = inputRate / divisor;
    const { coefficients, taps } = designPolyphase(inputRate, this.up, this.down);
    this.coefficients = coefficients;
    this.taps = taps;
    // history[taps - 1 + i] is sample i of the current block; the first taps - 1 are the previous ones.
    this.history = new Float32Array(taps - 1 + MAX_BLOCK);
    this.inputIndex = 0; // input sample (relative to the block start) the next output is centred on
    this.phase = 0;
    this.frameSamples = (OUTPUT_RATE * FRAME_MS) / 1000;
    this.pool = [];
    for (let i = 0; i < POOL_SIZE; i++) this.pool.push(new Int16Array(this.frameSamples));
    this.frame = null;
    this.frameFill = 0;
    this.dropped = 0;
    this.connected = false; // the microphone's input has arrived at least once
    this.message = { type: "frame", buffer: null, dropped: 0 };
    this.transfer = [null];
    this.port.onmessage = (event) => {
      if (event.data.type === "recycle") this.pool.push(new Int16Array(event.data.buffer));
    };
  }

  process(inputs) {
    const channels = inputs[0];
    const history = this.history;
    const offset = this.taps - 1;
    if (channels.length === 0) {
      // No input: before the microphone is connected there is nothing to send. Once it was, this is a muted
      // microphone in Firefox (Chromium gives a disabled track's node silence instead): send silence, so the
      // turn detection upstream hears the student stop, as it does in Chromium.
      if (!this.connected) return true;
      history.fill(0, offset, offset + RENDER_QUANTUM);
      this.resampleBlock(RENDER_QUANTUM);
      history.copyWithin(0, RENDER_QUANTUM, RENDER_QUANTUM + offset);
      return true;
    }
    this.connected = true;
    const blockLength = channels[0].length;
    // Down-mix to mono: a microphone usually is, but a USB interface may deliver two channels.
    const gain = 1 / channels.length;
    for (let i = 0; i < blockLength; i++) {
      let sum = 0;
      for (let c = 0; c < channels.length; c++) sum += channels[c][i];
      history[offset + i] = sum * gain;
    }
    this.resampleBlock(blockLength);
    history.copyWithin(0, blockLength, blockLength + offset);
    return true;
  }

  resampleBlock(blockLength) {
    const { coefficients, taps, history, up, down } = this;
    const offset = taps - 1;
    while (this.inputIndex < blockLength) {
      const base = this.phase * taps;
      const newest = offset + this.inputIndex;
      let acc = 0;
      for (let k = 0; k < taps; k++) acc += coefficients[base + k] * history[newest - k];
      this.emit(acc);
      this.phase += down;
      this.inputIndex += Math.floor(this.phase / up);
      this.phase %= up;
    }
    this.inputIndex -= blockLength;
  }

  emit(value) {
    if (this.frame === null) {
      const frame = this.pool.pop();
      if (frame === undefined) {
        this.dropped += 1;
        return;
      }
      this.frame = frame;
      this.frameFill = 0;
    }
    const clamped = value > 1 ? 1 : value < -1 ? -1 : value;
    this.frame[this.frameFill++] = Math.round(clamped * 32767);
    if (this.frameFill === this.frameSamples) {
      this.message.buffer = this.frame.buffer;
      this.message.dropped = this.dropped;
      this.transfer[0] = this.frame.buffer;
      this.port.postMessage(this.message, this.transfer);
      this.message.buffer = null;
      this.transfer[0] = null;
      this.frame = null;
    }
  }
}

registerProcessor("capture-processor", CaptureProcessor);
