// Tutor voice playback: PCM16 LE mono 24 kHz in, the context's rate out (Catmull-Rom cubic
// interpolation), gapless across frames and items.
//
// Invariants:
// - Sample positions are absolute counts of 24 kHz samples since the node started; `written` is the
//   end of what arrived, `position` is the fractional source position of the next output sample.
// - Playback starts (and restarts after an underrun) only once PREBUFFER_SAMPLES are queued, so
//   bursty network arrival does not turn into clicks; the tail of a finished item plays without it.
// - process() allocates nothing: the ring and the report messages are allocated up front; the ring
//   only grows in the message handler.
//
// Port messages in:
//   {type: "item", item_id}      the samples that follow belong to this tutor item (audio.start)
//   {type: "samples", buffer}    an ArrayBuffer of Int16 samples for the current item
//   {type: "end", item_id}       the item is complete (audio.done)
//   {type: "flush"}              drop everything queued now (audio.interrupt)
// Port messages out:
//   {type: "started", item_id, time}           the item's first sample was rendered at context time
//   {type: "played", item_id, samples, done}   24 kHz samples of the item played so far, at least
//                                               every REPORT_SAMPLES while it plays; done = finished
//                                               or flushed

const SOURCE_RATE = 24000;
const PREBUFFER_SAMPLES = (SOURCE_RATE * 80) / 1000;
const REPORT_SAMPLES = (SOURCE_RATE * 50) / 1000;
const INITIAL_CAPACITY = 1 << 20; // ~44 s; a whole tutor answer can arrive faster than real time
const MAX_ITEMS = 64;

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.ring = new Float32Array(INITIAL_CAPACITY);
    this.written = 0;
    this.position = 0;
    // Samples before `floor` are silence for the interpolator (nothing before a flush bleeds in).
    this.floor = 0;
    this.step = SOURCE_RATE / sampleRate;
    this.playing = false;
    this.underruns = 0;
    // Queued items as parallel fixed-size rings, oldest at `head`.
    this.itemIds = new Array(MAX_ITEMS).fill("");
    this.itemStart = new Float64Array(MAX_ITEMS);
    this.itemEnd = new Float64Array(MAX_ITEMS);
    this.itemReported = new Float64Array(MAX_ITEMS);
    this.itemStarted = new Uint8Array(MAX_ITEMS);
    this.head = 0;
    this.count = 0;
    this.playedMessage = { type: "played", item_id: "", samples: 0, done: false, underruns: 0 };
    this.startedMessage = { type: "started", item_id: "", time: 0 };
    this.port.onmessage = (event) => this.receive(event.data);
  }

  receive(message) {
    switch (message.type) {
      case "item":
        this.openItem(message.item_id);
        break;
      case "samples":
        this.append(new Int16Array(message.buffer, 0, message.buffer.byteLength >> 1));
        break;
      case "end":
        this.endItem(message.item_id);
        break;
      case "flush":
        this.flush();
        break;
    }
  }

  openItem(itemId) {
    if (this.count === MAX_ITEMS) this.retireHead(Math.floor(this.position));
    const slot = (this.head + this.count) % MAX_ITEMS;
    this.itemIds[slot] = itemId;
    this.itemStart[slot] = this.written;
    this.itemEnd[slot] = Infinity;
    this.itemReported[slot] = 0;
    this.itemStarted[slot] = 0;
    this.count += 1;
  }

  endItem(itemId) {
    for (let i = 0; i < this.count; i++) {
      const slot = (this.head + i) % MAX_ITEMS;
      if (this.itemIds[slot] === itemId && this.itemEnd[slot] === Infinity) this.itemEnd[slot] = this.written;
    }
  }

  append(samples) {
    const needed = this.written + samples.length - Math.floor(this.position) + 4;
    if (needed > this.ring.length) this.grow(needed);
    const ring = this.ring;
    const capacity = ring.length;
    for (let i = 0; i < samples.length; i++) ring[(this.written + i) % capacity] = samples[i] / 32768;
    this.written += samples.length;
  }

  grow(needed) {
    let capacity = this.ring.length * 2;
    while (capacity < needed) capacity *= 2;
    const ring = new Float32Array(capacity);
    const old = this.ring;
    for (let k = Math.max(0, Math.floor(this.position) - 2); k < this.written; k++) {
      ring[k % capacity] = old[k % old.length];
    }
    this.ring = ring;
  }

  flush() {
    const played = Math.min(Math.floor(this.position), this.written);
    while (this.count > 0) this.retireHead(played);
    this.position = this.written;
    this.floor = this.written;
    this.playing = false;
  }

  // Every queued item has its end: what is left is a tail to play out without prebuffering.
  draining() {
    return this.count === 0 || this.itemEnd[(this.head + this.count - 1) % MAX_ITEMS] !== Infinity;
  }

  sample(k) {
    return k < this.floor || k >= this.written ? 0 : this.ring[k % this.ring.length];
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    const step = this.step;
    for (let i = 0; i < out.length; i++) {
      if (!this.playing) {
        const queued = this.written - this.position;
        if (queued >= PREBUFFER_SAMPLES || (queued > 0 && this.draining())) this.playing = true;
      }
      if (this.playing) {
        const k = Math.floor(this.position);
        if (k >= this.written || (k + 2 >= this.written && !this.draining())) {
          if (k < this.written) this.underruns += 1;
          else this.position = this.written; // keep the next item sample-aligned
          this.playing = false;
          out[i] = 0;
          continue;
        }
        const t = this.position - k;
        const xm1 = this.sample(k - 1);
        const x0 = this.sample(k);
        const x1 = this.sample(k + 1);
        const x2 = this.sample(k + 2);
        out[i] = x0 + 0.5 * t * (x1 - xm1 + t * (2 * xm1 - 5 * x0 + 4 * x1 - x2 + t * (3 * (x0 - x1) + x2 - xm1)));
        this.position += step;
      } else {
        out[i] = 0;
      }
    }
    this.account(Math.min(Math.floor(this.position), this.written));
    return true;
  }

  // Report per item how many of its samples have been rendered, and retire finished items.
  account(played) {
    while (this.count > 0) {
      const slot = this.head;
      const start = this.itemStart[slot];
      if (this.itemEnd[slot] <= start) {
        this.retireHead(played); // an item without audio
        continue;
      }
      if (played <= start) return;
      if (!this.itemStarted[slot]) {
        this.itemStarted[slot] = 1;
        this.startedMessage.item_id = this.itemIds[slot];
        this.startedMessage.time = currentTime;
        this.port.postMessage(this.startedMessage);
      }
      if (played < this.itemEnd[slot]) {
        if (played - start - this.itemReported[slot] >= REPORT_SAMPLES) this.report(slot, played - start, false);
        return;
      }
      this.retireHead(played);
    }
  }

  retireHead(played) {
    const slot = this.head;
    const start = this.itemStart[slot];
    const end = Math.min(this.itemEnd[slot], this.written);
    this.report(slot, Math.max(0, Math.min(played, end) - start), true);
    this.head = (this.head + 1) % MAX_ITEMS;
    this.count -= 1;
  }

  report(slot, samples, done) {
    this.itemReported[slot] = samples;
    this.playedMessage.item_id = this.itemIds[slot];
    this.playedMessage.samples = samples;
    this.playedMessage.done = done;
    this.playedMessage.underruns = this.underruns;
    this.port.postMessage(this.playedMessage);
  }
}

registerProcessor("playback-processor", PlaybackProcessor);
