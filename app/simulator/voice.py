"""A tiny speech-like synthesiser for the Realtime simulator: text in, PCM16 24 kHz mono out.

It is not speech, but it has the features audio code and tests care about: a glottal pulse train at
110-220 Hz with sentence intonation, vowel formants that change from syllable to syllable, syllable
amplitude envelopes, consonant noise bursts and pauses between words, at about four syllables a
second. Pure Python (the app has no numpy), deterministic for a given text, and rendered lazily one
chunk at a time so the first chunk is ready in a millisecond or two.

Invariant: the concatenation of `Utterance.words[i].text` is exactly the input text, and each word's
`start_sample` is where its first syllable begins, so transcript deltas can be sent in step with audio.
"""

from __future__ import annotations

import functools
import math
import random
import re
import sys
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

SAMPLE_RATE = 24_000
BYTES_PER_SAMPLE = 2
CHUNK_SAMPLES = 2_400  # 100 ms, the size of a Realtime output_audio.delta

_TABLE_SIZE = 512  # samples in one glottal period of a vowel's wavetable (a power of two)
_PEAK = 0.42 * 32767  # about -7.5 dBFS at the loudest point of a syllable
_SYLLABLE_SECONDS = 0.19
_WORD_PAUSE_SECONDS = 0.07
_COMMA_PAUSE_SECONDS = 0.22
_SENTENCE_PAUSE_SECONDS = 0.38
_ATTACK_SECONDS = 0.025
_RELEASE_SECONDS = 0.06

# (frequency Hz, bandwidth Hz, gain) of the first three formants of a few vowels.
_FORMANTS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "a": ((800.0, 110.0, 1.0), (1250.0, 120.0, 0.55), (2600.0, 160.0, 0.25)),
    "e": ((480.0, 80.0, 1.0), (1900.0, 130.0, 0.5), (2600.0, 170.0, 0.3)),
    "i": ((300.0, 60.0, 1.0), (2300.0, 150.0, 0.45), (3000.0, 200.0, 0.3)),
    "o": ((520.0, 90.0, 1.0), (900.0, 100.0, 0.6), (2450.0, 160.0, 0.2)),
    "u": ((340.0, 70.0, 1.0), (800.0, 100.0, 0.45), (2250.0, 160.0, 0.15)),
}
_VOWEL_GROUP = re.compile(r"[aeiouy]+", re.IGNORECASE)
_TOKEN = re.compile(r"\s*\S+")


@dataclass(frozen=True)
class SpokenWord:
    """One transcript delta: `text` keeps its leading space, so the deltas add up to the transcript."""

    text: str
    start_sample: int


@dataclass(frozen=True)
class _Syllable:
    start_sample: int
    length: int
    pitch_start_hz: float
    pitch_end_hz: float
    vowel: str
    loudness: float
    noise_samples: int  # a consonant-like noise burst at the onset; 0 for none


class Utterance:
    """The plan of one spoken text; `chunks()` renders it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._random = random.Random(zlib.crc32(text.encode()))
        words: list[SpokenWord] = []
        syllables: list[_Syllable] = []
        position = int(0.04 * SAMPLE_RATE)  # a breath before the first word
        sentences = _split_sentences(text)
        for sentence in sentences:
            tokens = _TOKEN.findall(sentence)
            sentence_syllables = sum(_syllable_count(token) for token in tokens)
            rises = sentence.rstrip().endswith("?")
            index_in_sentence = 0
            for token in tokens:
                words.append(SpokenWord(token, position))
                for syllable_in_word in range(_syllable_count(token)):
                    progress = index_in_sentence / max(1, sentence_syllables - 1)
                    syllable = self._plan_syllable(
                        token, syllable_in_word, position, progress, rises and progress > 0.7
                    )
                    syllables.append(syllable)
                    position += syllable.length
                    index_in_sentence += 1
                position += int(_pause_after(token) * SAMPLE_RATE)
        self.words: tuple[SpokenWord, ...] = tuple(words)
        self._syllables: tuple[_Syllable, ...] = tuple(syllables)
        self.total_samples = position

    @property
    def duration_ms(self) -> int:
        return self.total_samples * 1000 // SAMPLE_RATE

    def chunks(self, chunk_samples: int = CHUNK_SAMPLES) -> Iterator[bytes]:
        """Yield the PCM16 little-endian audio, `chunk_samples` at a time (the last one shorter)."""
        next_syllable = 0
        for chunk_start in range(0, self.total_samples, chunk_samples):
            chunk_end = min(chunk_start + chunk_samples, self.total_samples)
            samples = [0.0] * (chunk_end - chunk_start)
            while (
                next_syllable < len(self._syllables)
                and self._syllables[next_syllable].start_sample + self._syllables[next_syllable].length
                <= chunk_start
            ):
                next_syllable += 1
            index = next_syllable
            while index < len(self._syllables) and self._syllables[index].start_sample < chunk_end:
                self._render(self._syllables[index], samples, chunk_start)
                index += 1
            yield _to_pcm16(samples)

    def _plan_syllable(
        self, token: str, syllable_in_word: int, start: int, progress: float, question_rise: bool
    ) -> _Syllable:
        vowels = [group.group()[0].lower() for group in _VOWEL_GROUP.finditer(token)] or ["a"]
        vowel = vowels[syllable_in_word % len(vowels)]
        vowel = "i" if vowel == "y" else vowel
        # Declination: the pitch falls across a statement and rises at the end of a question.
        base = 185.0 - 55.0 * progress
        if question_rise:
            base = 150.0 + 120.0 * (progress - 0.7)
        stressed = syllable_in_word == 0
        pitch_start = min(220.0, max(110.0, base * (1.06 if stressed else 0.98) * self._random.uniform(0.97, 1.03)))
        pitch_end = min(220.0, max(110.0, pitch_start * self._random.uniform(0.9, 1.04)))
        length = int(_SYLLABLE_SECONDS * self._random.uniform(0.8, 1.2) * SAMPLE_RATE)
        noise = int(self._random.uniform(0.02, 0.05) * SAMPLE_RATE) if self._random.random() < 0.45 else 0
        loudness = (1.0 if stressed else 0.75) * self._random.uniform(0.85, 1.0)
        return _Syllable(start, length, pitch_start, pitch_end, vowel, loudness, noise)

    def _render(self, syllable: _Syllable, samples: list[float], chunk_start: int) -> None:
        table = _wavetable(syllable.vowel, int(syllable.pitch_start_hz) // 10 * 10)
        mask = _TABLE_SIZE - 1
        first = max(chunk_start, syllable.start_sample)
        last = min(chunk_start + len(samples), syllable.start_sample + syllable.length)
        duration = syllable.length / SAMPLE_RATE
        glide = (syllable.pitch_end_hz - syllable.pitch_start_hz) / duration
        attack = _ATTACK_SECONDS * SAMPLE_RATE
        release = _RELEASE_SECONDS * SAMPLE_RATE
        gain = _PEAK * syllable.loudness
        noise = random.Random(syllable.start_sample)
        for absolute in range(first, last):
            offset = absolute - syllable.start_sample
            seconds = offset / SAMPLE_RATE
            # Phase in periods of a pitch gliding linearly from pitch_start to pitch_end.
            phase = seconds * (syllable.pitch_start_hz + 0.5 * glide * seconds)
            envelope = min(1.0, offset / attack, (syllable.length - offset) / release)
            value = table[int(phase * _TABLE_SIZE) & mask]
            if offset < syllable.noise_samples:
                value = 0.35 * value + 0.3 * noise.uniform(-1.0, 1.0)
            samples[absolute - chunk_start] += gain * envelope * value


@functools.lru_cache(maxsize=128)
def _wavetable(vowel: str, pitch_hz: int) -> tuple[float, ...]:
    """One period of a glottal pulse shaped by the vowel's formants (pitch rounded to 10 Hz)."""
    fundamental = pitch_hz + 5.0
    amplitudes = []
    for harmonic in range(1, int(3800 // fundamental) + 1):
        frequency = harmonic * fundamental
        envelope = sum(
            gain / (1.0 + ((frequency - centre) / bandwidth) ** 2) for centre, bandwidth, gain in _FORMANTS[vowel]
        )
        # A glottal source falls off at about 12 dB per octave; the formants lift it back.
        amplitudes.append((envelope + 0.02) / harmonic)
    table = [
        sum(
            amplitude * math.sin(2.0 * math.pi * (index + 1) * sample / _TABLE_SIZE)
            for index, amplitude in enumerate(amplitudes)
        )
        for sample in range(_TABLE_SIZE)
    ]
    peak = max(abs(value) for value in table) or 1.0
    return tuple(value / peak for value in table)


def _split_sentences(text: str) -> list[str]:
    return [sentence for sentence in re.findall(r"\s*[^.!?]+[.!?]*", text) if sentence.strip()]


def _syllable_count(token: str) -> int:
    return max(1, min(4, len(_VOWEL_GROUP.findall(token))))


def _pause_after(token: str) -> float:
    if token.rstrip()[-1:] in ".!?":
        return _SENTENCE_PAUSE_SECONDS
    if token.rstrip()[-1:] in ",;:":
        return _COMMA_PAUSE_SECONDS
    return _WORD_PAUSE_SECONDS


def _to_pcm16(samples: list[float]) -> bytes:
    pcm = array("h", [max(-32768, min(32767, int(value))) for value in samples])
    if sys.byteorder == "big":
        pcm.byteswap()
    return pcm.tobytes()
