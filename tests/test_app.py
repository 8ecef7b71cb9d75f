"""`dice serve` as a person uses it: the server started as a command on a free local port, `/compare` called
through gradio_client, and the page driven in headless Chromium (Debian's chromium + chromedriver; skipped
without them). Set DICE_SCREENSHOT=docs/app.png to keep the browser test's screenshot."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers import random_sharpener

from dicecfg import Sharpener, generate, load_pipeline
from dicecfg.app.compare import SHOWN, Request, Shot, compare, judge, panels
from dicecfg.cli import main
from dicecfg.errors import InputError
from dicecfg.metrics.world import reads_shapes_world
from dicecfg.sampling.methods import Unguided

PROMPT = "a small red circle to the left of a blue square"
SHOWCASE = (
    "a large green circle to the left of a small blue triangle on a gray background"  # the screenshot's
)
STEPS = 8
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1250",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",  # nothing but this machine is reachable
)


# ---- what the app computes (no server) -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "change, message",
    [
        (dict(prompt="  "), "prompt is empty"),
        (dict(steps=0), "steps must be between 1 and 100"),
        (dict(steps=101), "steps must be between 1 and 100"),
        (dict(steps=7.5), "steps must be a whole number"),
        (dict(seed=-1), "seed must be between 0"),
        (dict(seed="x"), "seed must be a whole number"),
        (dict(guidance_scale=float("nan")), "guidance scale must be between 1.0 and 20.0"),
        (dict(alpha=9), "alpha must be between 0.0 and 4.0"),
        (dict(alpha="strong"), "alpha must be a number"),
        (dict(negative_prompt="x" * 1001), "negative prompt has 1001 characters"),
        (
            dict(prompt="a red \ud800 circle"),
            r"prompt holds U\+D800 after 'a red ', which is not a character",
        ),
        (dict(negative_prompt="\udcff"), r"negative prompt holds U\+DCFF"),
        (dict(prompt=["a red circle"]), "prompt must be text"),
    ],
)
def test_bad_requests_are_refused_with_what_to_change(change, message):
    with pytest.raises(InputError, match=message):
        Request(**{"prompt": PROMPT, **change}).checked()


def test_requests_are_normalised():
    r = Request(f"  {PROMPT} ", " blurry ", seed=3.0, steps=12.0).checked()
    assert (r.prompt, r.negative_prompt, r.seed, r.steps) == (PROMPT, "blurry", 3, 12)
    assert isinstance(r.seed, int) and isinstance(r.steps, int)


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_compare_is_generate_for_each_method_from_one_seed(tiny_sd):
    sharp = random_sharpener(tiny_sd)
    shots = compare(tiny_sd, sharp, Request("a red circle", "a blue square", seed=4, steps=10))
    assert [s.key for s in shots] == list(SHOWN) == ["unguided", "cfg", "peer", "dice"]
    assert [s.sample.method for s in shots] == ["unguided", "cfg", "cfg", "dice"]
    assert [s.sample.nfe for s in shots] == [10, 20, 11, 10]  # the peer guides 1 of 10 steps
    assert all(s.sample.seed == 4 and s.sample.seconds > 0 and s.verdict is None for s in shots)
    for s in shots:
        expected = generate(
            tiny_sd,
            ["a red circle"],
            method=s.method,
            seeds=[4],
            negative_prompt="a blue square",
            num_inference_steps=10,
            progress=False,
        )
        assert np.array_equal(s.sample.image, next(expected).image), s.key
    assert shots[0].caption.startswith("unguided: 10 NFE, ") and shots[1].caption.startswith(
        "cfg w=5: 20 NFE, "
    )
    assert shots[2].caption.startswith("cfg w=5 on [0,0.1): 11 NFE, ")
    assert not reads_shapes_world(tiny_sd)  # 16-px images: no oracle verdicts


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_oracle_verdicts_name_what_is_wrong(tiny_sd):
    from dicecfg.world import Oracle, heldout_set, render

    item = next(it for it in heldout_set() if it.spec.relation in ("left of", "right of"))
    clean = render([item.scene])[0]
    blank = np.full_like(clean, clean[0, 0])  # the background alone: no objects
    mirrored = clean[:, ::-1]  # the objects swapped left-right: only the relation can be wrong
    scores = judge([clean, blank, mirrored], item.prompt, Oracle())
    assert scores[0]["all"] == 1 and scores[1]["count"] == 0
    sample = next(
        generate(tiny_sd, ["a red circle"], method="unguided", num_inference_steps=1, progress=False)
    )
    said = [Shot("unguided", Unguided(), sample, s).verdict for s in scores]
    assert said == ["correct", "wrong count", "wrong relation"]  # no objects: the rest says nothing
    assert judge([clean], "a corgi on the beach", Oracle()) == [None]  # outside the world's grammar
    none = Shot("unguided", Unguided(), sample, None)
    assert none.verdict is None and "oracle" not in none.caption


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_a_sharpener_for_another_model_stops_serve_before_it_starts(tiny_sd_dir, capsys):
    t0 = time.perf_counter()
    assert (
        main(["-q", "serve", "--model", str(tiny_sd_dir), "--sharpener", "mini", "--port", str(free_port())])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]  # the last line: loading bars may come first
    assert err.startswith(
        "dice: error: Sharpener dim 256 does not match the pipeline's text embedding dim 32"
    )
    assert main(["-q", "serve", "--model", str(tiny_sd_dir)]) == 2
    assert "needs its sharpener (--sharpener)" in capsys.readouterr().err
    assert time.perf_counter() - t0 < 60


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_serve_refuses_unusable_recorded_settings_at_start(tiny_sd_dir, tmp_path, capsys, monkeypatch):
    """A sharpener whose config.json records settings it cannot sample with (here a bad entry for negative
    prompts) stops `dice serve` with one line before the model loads, instead of failing every request."""
    sharp = random_sharpener(load_pipeline(tiny_sd_dir))
    sharp.config["sampling"] = {"alpha": 1.5, "stop": 0.5, "negative": "x"}
    sharp.save_pretrained(tmp_path / "s")
    monkeypatch.setattr("dicecfg.app.job.job_pipeline", lambda *a, **k: pytest.fail("loaded"))
    code = main(["-q", "serve", "--model", str(tiny_sd_dir), "--sharpener", str(tmp_path / "s"), "--port",
                 str(free_port())])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith('dice: error: config.json: "sampling"."negative" must be an object')


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_the_alpha_of_a_request_acts_on_every_image_and_panels_say_what_ran(tiny_sd):
    """The page's alpha slider starts at the recorded alpha: there, DICE is the sharpener's own settings; moved,
    it acts on images with a negative prompt too. A panel whose interval has no step at the request's count is
    labelled by what ran."""
    sharp = random_sharpener(tiny_sd)
    sharp.config["sampling"] = {"alpha": 1.5, "stop": 0.5, "negative": {"alpha": 1.0, "stop": 1.0}}
    from dicecfg.sampling.methods import Dice

    assert panels(sharp, Request(PROMPT, steps=10))["dice"] == Dice(sharp)
    assert panels(sharp, Request(PROMPT, steps=10, alpha=1.5))["dice"] == Dice(sharp)
    moved = panels(sharp, Request(PROMPT, steps=10, alpha=2.0))["dice"]
    assert moved.alpha == moved.neg_alpha == 2.0
    assert panels(sharp, Request(PROMPT, steps=9))["peer"] == Unguided()  # int(0.1 * 9) = 0 guided steps


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_the_queue_is_bounded_and_inputs_reach_the_apps_own_check(tiny_sd):
    pytest.importorskip("gradio", reason="dice serve needs gradio: pip install -e '.[app]'")
    from dicecfg.app.ui import QUEUE_SIZE, build_app

    app = build_app(tiny_sd, random_sharpener(tiny_sd))
    assert app._queue.max_size == QUEUE_SIZE > 0  # unbounded before: a flood of requests piled up in memory
    (fn,) = [f for f in app.fns.values() if f.api_name == "compare"]
    assert fn.preprocess is False  # gradio's own checks logged a traceback per bad value


# ---- the running server ---------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def this_machines_address() -> str | None:
    """A non-loopback address of this machine (None if it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`dice serve` on the shipped mini model, as a command; yields (url, seconds until the page answered, the
    path of its log: stdout and stderr)."""
    pytest.importorskip("gradio", reason="dice serve needs gradio: pip install -e '.[app]'")
    port, tmp = free_port(), tmp_path_factory.mktemp("serve")
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp / "gradio"), "HF_HUB_OFFLINE": "1"}
    log = open(tmp / "serve.log", "w")  # noqa: SIM115 - closed at teardown
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicecfg.cli", "serve", "--port", str(port), "--device", "cpu"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        # Ctrl-C must reach it even when this suite runs as a background job of a script: such a job's children
        # inherit SIGINT ignored, and a Python started that way keeps ignoring it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            assert proc.poll() is None, (tmp / "serve.log").read_text()
            assert time.perf_counter() - t0 < 120, "dice serve did not answer within 120 s"
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                time.sleep(0.2)
        yield url, time.perf_counter() - t0, tmp / "serve.log"
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the app closes and the command exits 0
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        log.close()
        assert code == 0, (tmp / "serve.log").read_text()


@pytest.fixture(scope="module")
def mini():
    """The shipped mini model and sharpener, loaded here to check the server's images."""
    return load_pipeline(), Sharpener.from_pretrained("mini")


@pytest.mark.integration  # a server process and a browser
def test_serve_answers_and_binds_to_this_machine_only(server):
    url, seconds, _ = server
    print(f"dice serve answered after {seconds:.1f} s")
    assert seconds < 60  # README: under 10 s on an idle 2-core CPU; generous here for loaded CI machines
    page = urllib.request.urlopen(url, timeout=10).read().decode()
    assert "fonts.googleapis" not in page and "cdn." not in page
    other = this_machines_address()
    if other is not None:  # not listening on the machine's other interfaces
        with pytest.raises(OSError), socket.create_connection((other, int(url.rsplit(":", 1)[1][:-1])), 2):
            pass


@pytest.mark.integration  # a server process and a browser
def test_compare_endpoint_through_gradio_client(server, mini, tmp_path):
    from gradio_client import Client
    from gradio_client.exceptions import AppError
    from PIL import Image

    client = Client(server[0], verbose=False, download_files=str(tmp_path), analytics_enabled=False)
    t0 = time.perf_counter()
    gallery, details = client.predict(PROMPT, "", 7, STEPS, 5.0, 1.0, api_name="/compare")
    latency = time.perf_counter() - t0
    print(f"/compare at {STEPS} steps: {latency:.1f} s")
    assert latency < 120
    assert [d["method"] for d in details["images"]] == list(SHOWN)
    assert [d["nfe"] for d in details["images"]] == [STEPS, 2 * STEPS, STEPS + int(0.1 * STEPS), STEPS]
    for item, d in zip(gallery, details["images"], strict=True):
        assert f"{d['nfe']} NFE, {d['seconds']:.2f} s, oracle: " in item["caption"]
        assert 0 < d["seconds"] < latency and d["oracle"] in item["caption"]
        image = np.asarray(Image.open(item["image"]).convert("RGB"))
        pipe, sharp = mini
        expected = generate(
            pipe,
            [PROMPT],
            method=panels(sharp, Request(PROMPT, seed=7, steps=STEPS, alpha=1.0))[d["method"]],
            seeds=[7],
            num_inference_steps=STEPS,
            progress=False,
        )
        assert np.array_equal(image, next(expected).image), d["method"]  # the sampled pixels, losslessly

    with pytest.raises(AppError, match="The prompt is empty"):
        client.predict("", "", 7, STEPS, 5.0, 1.0, api_name="/compare")
    log_before = server[2].read_text()
    bad = [  # the app's own one-line message on the page, and nothing in the server's log
        ((PROMPT, "", 7, 1000, 5.0, 1.0), "steps must be between 1 and 100 (got 1000)."),
        ((PROMPT, "", 7, 0, 5.0, 1.0), "steps must be between 1 and 100 (got 0)."),
        ((PROMPT, "", -1, STEPS, 5.0, 1.0), "seed must be between 0 and 4294967295 (got -1)."),
        ((PROMPT, "", "abc", STEPS, 5.0, 1.0), "seed must be a whole number (got 'abc')."),
        ((PROMPT, "", 7, STEPS, "nan", 1.0), "guidance scale must be between 1.0 and 20.0 (got nan)."),
        ((PROMPT, 5, 7, STEPS, 5.0, 1.0), "The negative prompt must be text (got int)."),
    ]
    for args, message in bad:
        with pytest.raises(AppError, match=f"^{re.escape(message)}$"):
            client.predict(*args, api_name="/compare")
    time.sleep(0.5)  # let the server's log reach its file
    assert server[2].read_text() == log_before  # gradio printed a traceback per bad value before
    again, _ = client.predict(PROMPT, "", 7, 2, 5.0, 1.0, api_name="/compare")  # the server is still up
    assert len(again) == len(SHOWN)
    alone, details = client.predict(prompt=PROMPT, api_name="/compare")  # every other input has its default
    assert len(alone) == len(SHOWN) and details["request"]["steps"] == 20 and details["request"]["seed"] == 0


# ---- the page in a browser ------------------------------------------------------------------------------------
@pytest.fixture()
def browser(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Chromium and its driver: apt-get install chromium chromium-driver (Debian)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium: pip install -e '.[dev]'")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.mark.integration  # a server process and a browser
def test_page_in_headless_chromium(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url = server[0]
    wait = WebDriverWait(browser, 120)
    browser.get(url)
    prompt = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#prompt textarea"))
    button = browser.find_element(By.CSS_SELECTOR, "#compare")
    button.click()  # no prompt yet: an error message, and the page goes on
    wait.until(lambda d: "The prompt is empty" in d.find_element(By.TAG_NAME, "body").text)
    browser.find_element(By.CSS_SELECTOR, "[data-testid=toast-close]").click()

    prompt.send_keys(SHOWCASE)
    button.click()
    sizes = "return [...document.querySelectorAll('#dice-images img')].map(i => i.complete && i.naturalWidth)"
    shown = wait.until(lambda d: (n := d.execute_script(sizes)) and len(n) == len(SHOWN) and all(n) and n)
    assert shown == [64] * len(SHOWN)  # four images, loaded, each the model's 64 x 64 pixels
    text = browser.find_element(By.ID, "dice-images").text
    for label in (
        "unguided: 20 NFE, ",
        "cfg w=5: 40 NFE, ",
        "cfg w=5 on [0,0.1): 22 NFE, ",
        "dice alpha=",
        "oracle: ",
    ):
        assert label in text, text

    shot = Path(os.environ.get("DICE_SCREENSHOT") or tmp_path / "app.png")
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "[data-testid=toast-body]"))
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(u.startswith((url, "data:", "blob:")) for u in loaded), (
        loaded
    )  # nothing from elsewhere


@pytest.mark.integration  # end to end: a pipeline, a command or a process
@pytest.mark.parametrize("port", ["70000", "-1", "0"])
def test_a_port_out_of_range_is_refused_when_parsed(port, capsys):
    assert main(["-q", "serve", "--port", port]) == 2  # OverflowError or httpx.ConnectError before
    err = capsys.readouterr().err
    assert err.startswith("dice: error: --port") and "must be" in err and err.count("\n") == 1


def test_a_port_out_of_range_is_refused_from_python():
    from dicecfg.app.job import ServeJob, run_serve

    with pytest.raises(InputError, match=r"--port \(port\) must be <= 65535"):
        run_serve(ServeJob(port=70000))
