"""Target ``relay-unrecorded``: the product (app.main) with every lesson record discarded instead of
handed to the store's writer. Run beside target ``relay`` in one bench run, the difference is what
keeping lesson records costs the audio path.

Run by the bench as ``python -m bench.unrecorded_relay``, served as ``python -m app`` serves the product
(one worker); configured from the environment like the product.
"""

from __future__ import annotations

import signal

from app.main import DrainingServer, create_app, exit_cleanly, server_config
from app.records import DiscardRecords
from app.settings import load_settings
from app.store.runtime import prepare_database

app = create_app(record_sink=DiscardRecords())


def main() -> None:
    settings = load_settings()
    prepare_database(settings)
    signal.signal(signal.SIGTERM, exit_cleanly)
    config = server_config(app, settings, host=settings.host, port=settings.port)
    DrainingServer(config, grace_s=settings.shutdown_grace_seconds).run()


if __name__ == "__main__":
    main()
