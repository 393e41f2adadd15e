"""Target ``relay-unrecorded``: the product (app.main) with every lesson record discarded instead of
handed to the store's writer. Run beside target ``relay`` in one bench run, the difference is what
keeping lesson records costs the audio path.

Run by the bench as ``python -m uvicorn bench.unrecorded_relay:app``; configured from the environment
like the product.
"""

from __future__ import annotations

from app.main import create_app
from app.records import DiscardRecords

app = create_app(record_sink=DiscardRecords())
