"""lesson relay: a live voice language lesson with an AI tutor over the OpenAI Realtime API."""
