"""`photon app`: the drawing against the token footprint, the server's safety rules, and the page in
a real browser (Debian's chromium + chromedriver through selenium), started as the README says."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from photon.core.errors import PhotonError
from photon.viewer import Display, enlarge, expand_tokens, selection_overlay, slice_image

gradio = pytest.importorskip("gradio")
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
VOLUME = (16, 112, 112)


def test_a_token_covers_its_footprint_and_nothing_else():
    keep = np.zeros((3, 4, 4), bool)
    keep[1, 2, 3] = True
    mask = expand_tokens(keep, (7, 112, 112), temporal_patch=2)
    assert mask.shape == (7, 112, 112)
    assert mask.sum() == 2 * 28 * 28  # temporal patch x (patch x merge)^2
    assert mask[2:4, 56:84, 84:112].all()
    assert not mask[6].any()  # past the last whole temporal patch: no token


def test_overlays_differ_exactly_where_two_selections_differ():
    rng = np.random.default_rng(0)
    display = Display("volume", rng.uniform(-1000, 1000, (8, 56, 56)).astype(np.float32))
    first, second = rng.random((4, 2, 2)) > 0.5, rng.random((4, 2, 2)) > 0.5
    for plane in ("axial", "coronal", "sagittal"):
        a = selection_overlay(display, first, 2, plane, 3, "lung")
        b = selection_overlay(display, second, 2, plane, 3, "lung")
        assert a.shape == b.shape == slice_image(display, plane, 3, "lung").shape
        differs = (expand_tokens(first, (8, 56, 56), 2) != expand_tokens(second, (8, 56, 56), 2))
        expected = {"axial": differs[3], "coronal": differs[::-1, 3], "sagittal": differs[::-1, :, 3]}[plane]
        np.testing.assert_array_equal((a != b).any(axis=-1), expected, err_msg=plane)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from photon.app import PhotonApp
    from photon.opening import OpenRequest, open_model
    from photon.wrapping import media_options

    root = tmp_path_factory.mktemp("data")
    loaded = open_model(OpenRequest("qwen2.5-vl-tiny")).loaded
    return PhotonApp(loaded, media_options(loaded), data_root=root)


def test_server_paths_stay_under_the_data_root(app, tmp_path):
    outside = tmp_path / "outside.nii.gz"
    outside.write_bytes(b"x")
    for text in ("../outside.nii.gz", str(outside), "/etc/passwd"):
        with pytest.raises(PhotonError, match="outside the data root"):
            app.resolve(text)
    with pytest.raises(PhotonError, match="no such file or folder under"):
        app.resolve("missing.nii.gz")
    from photon.app import PhotonApp

    closed = PhotonApp(app.loaded, app.options)
    with pytest.raises(PhotonError, match="opening server paths is off"):
        closed.resolve("anything")


def test_a_bad_file_is_the_loaders_one_line_message(app, tmp_path):
    from photon.app import one_line

    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a volume")
    with pytest.raises(PhotonError) as caught:
        app.open(bad)
    message = one_line(caught.value)
    assert message.startswith(f"{bad}: not a readable NIfTI file") and "\n" not in message


def test_the_app_asks_keeps_two_questions_and_draws_the_same_token_grid(app, tmp_path):
    from photon.demo.phantoms import write_split

    records = write_split(tmp_path, "test", 1, seed=0, shape=VOLUME)
    volume = tmp_path / json.loads(records.read_text())["videos"][0]
    session = app.open(volume)
    assert session.display.planes() == ("axial", "coronal", "sagittal")
    session = app.ask(session, "Is there a lesion in the left anterior quadrant?")
    session = app.ask(session, "How many lesions are there?", baseline=True, rule="keep_ratio", keep_ratio=0.25)
    latest, previous = session.answers
    assert latest.question == "How many lesions are there?" and previous.question.startswith("Is there a lesion")
    assert latest.n_kept == round(0.25 * latest.n_visual) and latest.baseline is not None
    assert latest.keep.sum() == latest.n_kept and previous.keep.sum() == previous.n_kept
    view, newest, older = app.views(session, "coronal", 50, "mediastinum")
    assert view.shape == newest.shape == older.shape and max(view.shape[:2]) >= 384


def test_video_frames_and_image_sets_open_as_frames(app, tmp_path):
    from tests.make_media import write_image, write_mp4

    session = app.open(write_mp4(tmp_path / "clip.mp4", n_frames=25, fps=10))
    assert session.display.planes() == ("frames",) and session.media.kind == "video"
    session = app.ask(session, "What happens in the video?")
    frames = session.display.slices("frames")
    view, kept, none = app.views(session, "frames", frames - 1, "full")
    assert none is None and view.shape == kept.shape
    (tmp_path / "study").mkdir()
    for n in range(3):
        write_image(tmp_path / "study" / f"frame{n}.png")
    study = app.open(tmp_path / "study")
    assert study.display.planes() == ("frames",) and study.display.slices("frames") == 3


def test_safe_defaults_localhost_upload_limit_one_request_at_a_time(app, tmp_path):
    import argparse

    from photon.app import build_ui, check_upload
    from photon.commands.app import configure

    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args([])
    assert args.host == "127.0.0.1" and args.data_root is None and args.max_upload_mb == 2048
    big = tmp_path / "big.nii.gz"
    big.write_bytes(b"0" * (2 * 2**20))
    with pytest.raises(PhotonError, match=r"big.nii.gz: 2 MB, over the 1 MB upload limit"):
        check_upload(big, 1)
    assert check_upload(big, 2) == big
    ui = build_ui(app)
    assert ui._queue.default_concurrency_limit == 1  # concurrent requests wait for the one model


def app_of(*argv):
    from photon.cli import build_parser
    from photon.commands.app import app_from

    return app_from(build_parser().parse_args(["app", *argv]))


def test_command_line_options_reach_the_app(tmp_path, capsys):
    """`photon app` opens its model exactly as `photon attach` does; each option shows in the app it builds."""
    from photon.cli import main
    from tests.hub_layouts import write_photon_release_folder

    made = app_of("--keep-ratio", "0.25", "--layer", "2", "--max-new-tokens", "3", "--media", "ct.windows=[lung,mediastinum,bone]",
                  "--device", "cpu", "--dtype", "float32", "--attn", "eager", "--host", "127.0.0.1", "--max-upload-mb", "8")
    assert made.loaded.backbone == "qwen2.5-vl-tiny" and "random seeded weights" in made.note  # the offline default
    assert made.current_settings() == {"rule": "keep_ratio", "layer": 2, "keep_ratio": 0.25, "theta": None}
    assert made.max_new_tokens == 3 and made.options["ct"]["windows"] == ["lung", "mediastinum", "bone"]
    assert app_of("--backbone", "qwen3-vl-tiny", "--mode", "zero_shot", "--theta", "0.3").current_settings()["theta"] == 0.3
    assert app_of("--pruner", "random", "--keep-ratio", "0.5").pruner == "random"
    assert main(["attach", "--backbone", "qwen2.5-vl-tiny", "--save", str(tmp_path / "wrapped")]) == 0
    from_checkpoint = app_of("--checkpoint", str(tmp_path / "wrapped"), "--backbone", "qwen2.5-vl-tiny", "--backbone-only")
    assert from_checkpoint.mode == "zero_shot"
    write_photon_release_folder(tmp_path / "s2", with_kernel=False)
    with pytest.raises(PhotonError, match="model.visual.patch_embed.proj.weight"):
        app_of("--backbone", str(tmp_path / "s2"))
    trained = app_of("--backbone", str(tmp_path / "s2"), "--allow-weight-mismatch")
    assert trained.mode == "trained"
    before = trained.current_settings()
    trained.apply_settings("keep_ratio", 0.1, None, 0)  # the controls act in zero-shot mode only
    assert trained.current_settings() == before
    for argv, expected in [(["--max-upload-mb", "0"], "--max-upload-mb must be at least 1"),
                           (["--data-root", str(tmp_path / "nowhere")], "no such folder"),
                           (["--port", "70000"], "expected 1-65535")]:
        with pytest.raises(PhotonError, match=expected):
            app_of(*argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def image_at(url: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(fetch(url))).convert("RGB"))


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None, reason="needs Debian's chromium and chromium-driver (apt-get)")
def test_in_a_real_browser(tmp_path):
    """Start `photon app` as documented, upload a phantom, ask two questions, and read the page."""
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from photon.demo.phantoms import write_split
    from photon.inference import ask
    from photon.opening import OpenRequest, open_model
    from photon.visualize import token_grids

    data = tmp_path / "data"
    records = write_split(data, "test", 1, seed=0, shape=VOLUME)
    volume = data / json.loads(records.read_text())["videos"][0]
    (data / "broken.nii.gz").write_bytes(b"not a volume")
    shots = Path(os.environ.get("PHOTON_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, "-m", "photon", "app", "--port", str(port), "--data-root", str(data),
                               "--max-new-tokens", "32"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    options = Options()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1400"):
        options.add_argument(flag)
    options.binary_location = CHROMIUM
    driver = None
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 180
        while True:
            try:
                fetch(url)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"photon app did not start: {server.stdout.read() if server.poll() is not None else 'timeout'}")
                time.sleep(1)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        driver.get(url)
        wait = WebDriverWait(driver, 180)
        assert "random seeded weights" in wait.until(lambda d: d.find_element(By.ID, "photon-note")).text

        def status() -> str:
            return driver.find_element(By.ID, "photon-status").text

        def upload(path: Path) -> None:
            driver.find_element(By.CSS_SELECTOR, "#photon-upload input[type=file]").send_keys(str(path))

        # a bad file: the loader's one line on the page, no traceback
        upload(data / "broken.nii.gz")
        wait.until(lambda d: "broken.nii.gz" in status())
        assert "not a readable NIfTI file" in status() and "Traceback" not in driver.page_source
        # a path outside the data root is refused
        path_box = driver.find_element(By.CSS_SELECTOR, "#photon-path textarea, #photon-path input")
        path_box.send_keys("../outside.nii.gz")
        driver.find_element(By.ID, "photon-open").click()
        wait.until(lambda d: "outside the data root" in status())

        upload(volume)
        wait.until(lambda d: "model input" in status())
        questions = ["Is there a lesion in the left anterior quadrant?", "How many lesions are there?"]

        def ask_on_page(question: str, n: int) -> None:
            box = driver.find_element(By.CSS_SELECTOR, "#photon-question textarea")
            box.clear()
            box.send_keys(question)
            driver.find_element(By.ID, "photon-ask").click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#photon-latest .photon-question")
                       and d.find_element(By.CSS_SELECTOR, "#photon-latest .photon-question").text == question
                       and len(d.find_elements(By.CSS_SELECTOR, "#photon-record-latest a[href]")) > 0
                       and (n == 1 or len(d.find_elements(By.CSS_SELECTOR, "#photon-record-previous a[href]")) > 0))

        ask_on_page(questions[0], 1)
        driver.save_screenshot(str(shots / "app-first-question.png"))
        driver.find_element(By.CSS_SELECTOR, "#photon-baseline input[type=checkbox]").click()  # unpruned beside it
        ask_on_page(questions[1], 2)
        time.sleep(1)  # the images of the same update
        driver.save_screenshot(str(shots / "app-two-questions.png"))

        def read(slot: str) -> dict:
            block = driver.find_element(By.ID, f"photon-{slot}")
            record_url = driver.find_element(By.CSS_SELECTOR, f"#photon-record-{slot} a[href]").get_attribute("href")
            return {"question": block.find_element(By.CLASS_NAME, "photon-question").text,
                    "answer": block.find_element(By.CLASS_NAME, "photon-text").text,
                    "kept": int(block.find_element(By.CLASS_NAME, "photon-kept").text),
                    "total": int(block.find_element(By.CLASS_NAME, "photon-total").text),
                    "record": json.loads(fetch(record_url)),
                    "overlay": image_at(driver.find_element(By.CSS_SELECTOR, f"#photon-overlay-{slot} img").get_attribute("src"))}

        latest, previous = read("latest"), read("previous")
        unpruned = driver.find_element(By.CSS_SELECTOR, "#photon-latest .photon-baseline").text
        assert not driver.find_elements(By.CSS_SELECTOR, "#photon-previous .photon-baseline")
        index = int(float(driver.find_element(By.CSS_SELECTOR, "#photon-slice input[type=number]").get_attribute("value")))
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)

    assert [previous["question"], latest["question"]] == questions
    loaded = open_model(OpenRequest("qwen2.5-vl-tiny")).loaded
    depth = loaded.encoder.geometry.temporal_patch_size
    for row in (previous, latest):
        keep = token_grids(row["record"])[0]
        assert row["kept"] == int(keep.sum()) and row["total"] == keep.size == 224 and row["answer"]
        # the page's answer and selection are what the same model gives in this process
        asked = ask(loaded, volume, row["question"], max_new_tokens=32, baseline=row is latest)
        assert asked.result.answer == row["answer"]
        np.testing.assert_array_equal(token_grids(asked.result.selection)[0], keep)
        row["keep"] = keep
    assert asked.baseline.answer == unpruned  # the unpruned model's answer, beside the second question's
    assert not np.array_equal(previous["keep"], latest["keep"]), "two questions kept the same tokens"
    # the overlays differ exactly where the two selections differ, cell by cell on the shown slice
    shape = tuple(np.asarray(asked.media[0].frames.shape)[[0, 2, 3]])
    differs = expand_tokens(previous["keep"], shape, depth) != expand_tokens(latest["keep"], shape, depth)
    expected = enlarge(differs[index].astype(np.uint8)).astype(bool)
    observed = (previous["overlay"].astype(int) != latest["overlay"].astype(int)).any(axis=-1)
    assert observed.shape == expected.shape
    np.testing.assert_array_equal(observed, expected)
    assert expected.any(), "the shown slice holds no token the two questions treat differently"
