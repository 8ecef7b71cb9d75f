"""`dice serve`: the options of the app (a frozen dataclass) and the one function that starts it."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..families import check_compatible
from ..flags import Checked, opt
from ..metrics.world import world_of
from ..pipeline import (
    default_sharpener,
    device_option,
    dtype_option,
    is_mini,
    model_option,
    sharpener_option,
)
from ..runs.jobs import job_pipeline
from ..sampling.methods import check_recorded
from ..sharpener import Sharpener
from .ui import CSS, build_app, import_gradio

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeJob(Checked):
    """`dice serve`: the model and sharpener to compare with, and where the page listens."""

    model: str | None = model_option()
    sharpener: str | None = sharpener_option()
    host: str = opt("127.0.0.1", "address to listen on (0.0.0.0 makes the app reachable from other machines)")
    port: int = opt(7860, "port to listen on (1 to 65535)", min=1, max=65535)
    device: str | None = device_option()
    dtype: str | None = dtype_option()


@dataclass
class Server:
    """A running app: its address, and how to wait for it or stop it."""

    url: str
    app: Any  # the gr.Blocks

    def wait(self) -> None:
        """Serve until Ctrl-C (or ``close()`` from another thread), then stop."""
        try:
            while self.app.is_running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            log.info("stopping")
        finally:
            self.close()

    def close(self) -> None:
        self.app.close()


def run_serve(job: ServeJob) -> Server:
    """Load the model and sharpener, check that they fit, and start the app; returns once it answers."""
    from ..world.worlds import get_world

    # gradio takes seconds to import: do it while the model loads (import locks make the later import wait)
    threading.Thread(target=import_gradio, daemon=True).start()
    name = default_sharpener(job.model, job.sharpener)
    if name is None:
        raise InputError("dice serve with a model of your own needs its sharpener (--sharpener).")
    sharp = Sharpener.from_pretrained(name)  # the small file first: a bad path fails before the model loads
    check_recorded(sharp)  # recorded settings it cannot sample with: refused now, not on every request
    pipe = job_pipeline(job.model, job.device, job.dtype)
    device = pipe.device
    fam = check_compatible(pipe, sharp)  # a sharpener for another model: refused before the page exists
    world = get_world(world_name) if (world_name := world_of(pipe)) else None
    model = "the shipped mini model" if is_mini(job.model) else job.model
    about = (
        f"Model: {model} ({fam.name}, {type(pipe).__name__}); sharpener: {name}; device: {device}. "
        "All four images use the same seed. CFG evaluates the network twice per step; the training-free peer "
        "guides only the first steps (twice there, once after); unguided sampling and DICE once per step."
        + (f" The {world.name} world's oracle judges each image (prompts in its grammar)." if world else "")
    )
    app = build_app(
        pipe,
        sharp,
        oracle=world.oracle() if world else None,
        title="DICE: unguided vs CFG vs its cheap peer vs DICE",
        about=about,
        examples=[it.prompt for it in world.heldout_set()[::97][:5]] if world else (),
    )
    try:
        app.launch(
            server_name=job.host,
            server_port=job.port,
            prevent_thread_lock=True,
            share=False,
            inbrowser=False,
            quiet=True,
            show_error=True,
            ssr_mode=False,
            pwa=False,
            mcp_server=False,
            enable_monitoring=False,
            css=CSS,
        )
    except OSError as e:
        raise InputError(f"Cannot listen on {job.host}:{job.port} ({e}). Pick another --port.") from e
    log.info("serving %s (%s) on %s", model, fam.name, app.local_url)
    return Server(app.local_url, app)
