"""The web page of `dice serve` (Gradio): the inputs, the four images side by side, and the named API endpoint
``/compare`` (``gradio_client.Client(url).predict(prompt, ..., api_name="/compare")``).

Offline by construction: gradio's default theme uses the font files shipped inside gradio, the page loads no
script from elsewhere, and telemetry and gradio's version check are off (``GRADIO_ANALYTICS_ENABLED=False``,
set before gradio is imported). Bad input becomes the app's own one-line message on the page (a ``gr.Error``, not printed in the server's log);
the server goes on. The inputs reach the app unchecked by gradio (``preprocess=False``): ``Request.checked()`` is
the one check.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

from ..errors import DiceError, MissingExtraError
from ..sampling.methods import Dice
from ..sharpener import Sharpener
from .compare import LIMITS, SHOWN, Request, compare

CSS = "#dice-images img { image-rendering: pixelated; }"  # tiny images (64 px) shown large stay crisp
DEFAULTS = Request(prompt="")  # the page's initial values are the request's defaults
QUEUE_SIZE = 16  # requests waiting at most (each takes seconds on a CPU): a flood is refused, not stored


def import_gradio() -> Any:
    """gradio, with telemetry off; a clear error naming the extra when it is not installed."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = (
        "False"  # read at import and launch: no calls home, no version check
    )
    try:
        import gradio
    except ImportError as e:
        raise MissingExtraError(f"dice serve needs gradio: pip install 'dicecfg[app]' ({e}).") from e
    return gradio


def build_app(
    pipe: Any, sharpener: Sharpener, *, oracle: Any = None, title: str = "DICE", about: str = "", examples=()
) -> Any:
    """The ``gr.Blocks`` of the app over a loaded pipeline and its sharpener (``oracle``: judge each image)."""
    gr = import_gradio()

    def run(
        prompt: Any, negative_prompt: Any, seed: Any, steps: Any, guidance_scale: Any, alpha: Any
    ) -> tuple[list[tuple[Any, str]], dict[str, Any]]:
        """Unguided, CFG, CFG on the first steps only (the training-free peer) and DICE images of one prompt
        from the same seed.

        Args:
            prompt: what the image should show.
            negative_prompt: c_neg (CFG's unconditional branch, DICE's sharpener input); "" for none.
            seed: the seed of all four images.
            steps: sampling steps (CFG evaluates the network twice per step, the peer twice on its first
                steps, the others once).
            guidance_scale: CFG's scale w.
            alpha: DICE's edit strength (the sharpener's recorded settings when it is the recorded alpha).
        Returns:
            the four images, each captioned "method: NFE, seconds[, oracle verdict]", and the same as JSON.
        """
        request = Request(prompt, negative_prompt, seed, steps, guidance_scale, alpha)
        try:
            request = request.checked()
            shots = compare(pipe, sharpener, request, oracle=oracle)
        except DiceError as e:
            raise gr.Error(str(e), print_exception=False) from e
        details = {"request": asdict(request), "images": [s.record() for s in shots]}
        return [(s.sample.image, s.caption) for s in shots], details

    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"## {title}\n{about}")
        with gr.Row(equal_height=True):
            prompt = gr.Textbox(label="Prompt", scale=3, elem_id="prompt", max_length=LIMITS.prompt_chars)
            # every input but the prompt has an initial value: the API's default (`/compare` with a prompt alone)
            negative = gr.Textbox(
                DEFAULTS.negative_prompt, label="Negative prompt (c_neg)", scale=2, elem_id="negative"
            )
        with gr.Row(equal_height=True):
            seed = gr.Number(DEFAULTS.seed, label="Seed", precision=0, minimum=LIMITS.seed[0])
            steps = gr.Slider(*LIMITS.steps, DEFAULTS.steps, step=1, label="Steps")
            w = gr.Slider(*LIMITS.guidance_scale, DEFAULTS.guidance_scale, step=0.5, label="CFG scale w")
            first = Dice(sharpener).alpha  # recorded, else 1; moved, it acts on every image
            alpha = gr.Slider(*LIMITS.alpha, first, step=0.05, label="DICE alpha")
            button = gr.Button("Compare", variant="primary", elem_id="compare")
        images = gr.Gallery(
            label=" | ".join(SHOWN) + " (same seed)",
            columns=len(SHOWN),
            format="png",  # lossless: the API returns the sampled pixels
            object_fit="contain",
            elem_id="dice-images",
        )
        with gr.Accordion("Details (JSON)", open=False):
            details = gr.JSON(show_label=False)
        if examples:
            gr.Examples([[e] for e in examples], inputs=[prompt], label="Prompts")
        gr.on(
            [button.click, prompt.submit],
            run,
            inputs=[prompt, negative, seed, steps, w, alpha],
            outputs=[images, details],
            api_name="compare",
            # the raw values reach run(): Request.checked() refuses bad ones with the app's own one-line message
            # (gradio's checks of each input would log a traceback per bad request and word it its own way)
            preprocess=False,
        )
    # one pipeline: requests take turns; past QUEUE_SIZE waiting, gradio answers "queue full" at once
    return app.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
