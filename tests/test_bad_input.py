"""What every ``vqgen`` command refuses: exit status 2, one ``vqgen: error:`` line, no traceback.

The table below is the documentation of what is refused. A row is ``(id, command, message)``:
``command`` is a ``vqgen`` command line whose ``{NAME}`` fields are paths in the workspace that
:func:`ws` builds (``F`` a plain file, ``EMPTY`` an empty folder, ``D`` a shapes image folder,
``R`` a tokenizer run, ``C`` its codes, ``P`` a tiny text-to-image pipeline, and broken copies of
them), and ``message`` is a part of the one error line. Rows run ``vqgen.cli.main`` in-process
(an exception escaping ``main`` is what the console script prints as a traceback); a few run the
real console script too (:func:`test_console_script_end_to_end`). Rows whose fix belongs to
another part of the tree are marked ``xfail(strict=True)`` with the owner in the reason.
"""
import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vqgen.cli import build_parser, main

ERROR_LINE = re.compile(r"^vqgen( [a-z-]+)*: error: ")  # ours, or argparse's "vqgen generate: error:"


def owner(who: str):
    return pytest.mark.xfail(strict=True, reason=f"owner: {who}")


def row(id_: str, command: str, message: str, marks=()):
    return pytest.param(command, message, id=id_, marks=marks)


ROWS = [
    # --- data -------------------------------------------------------------------------------------
    row("data-check-missing", "data check {W}/nope", "does not exist"),
    row("data-check-empty-folder", "data check {EMPTY}", "holds no metadata.jsonl and no image files"),
    row("data-check-plain-file", "data check {F}", "neither an image folder nor a .tar shard"),
    row("data-check-bad-classes-json", "data check {BADCLASSES}", "classes.json is not valid JSON"),
    row("data-check-show-negative", "data check {D} --show -1", "argument --show: -1 must be >= 0"),
    row("data-check-max-pixels-zero", "data check {D} --max-pixels 0", "must be positive"),
    row("data-digits-out-is-file", "data digits --out {F} --size 8", "exists and is not a directory"),
    row("data-digits-out-under-file", "data digits --out {F}/sub --size 8", "is a file"),
    row("data-shapes-out-in-proc", "data shapes --out /proc/vqgen-nope --num 2 --size 16",
        "cannot write the image folder"),
    row("data-digits-size-zero", "data digits --out {W}/dg --size 0", "must be positive"),
    row("data-shapes-out-under-file", "data shapes --out {F}/sub --num 2 --size 16", "is a file"),
    row("data-shapes-num-zero", "data shapes --out {W}/sh --num 0", "must be positive"),
    row("data-shapes-seed-negative", "data shapes --out {W}/sh --num 2 --seed -1", "argument --seed"),
    row("data-emoji-package-missing", "data emoji --package {W}/nope.tgz --out {W}/em", "does not exist"),
    row("data-emoji-package-not-a-tar", "data emoji --package {F} --out {W}/em", "not a .tgz or tar archive"),
    row("data-emoji-package-empty-folder", "data emoji --package {EMPTY} --out {W}/em", "holds no emoji.json"),
    row("data-emoji-background", "data emoji --package {EMPTY} --out {W}/em --background 1,2", "is not R,G,B"),
    # --- tokenizer ----------------------------------------------------------------------------------
    row("tokenizer-train-data-missing", "tokenizer train --data {W}/nope --preset tiny --out {W}/t1 --steps 2",
        "does not exist"),
    row("tokenizer-train-data-empty", "tokenizer train --data {EMPTY} --preset tiny --out {W}/t2 --steps 2",
        "no image files"),
    row("tokenizer-train-preset-unknown", "tokenizer train --data {D} --preset bogus --out {W}/t3",
        "unknown tokenizer preset 'bogus'"),
    row("tokenizer-train-set-unknown-field", "tokenizer train --data {D} --preset tiny --out {W}/t4 --set bogus=1",
        "unknown config field 'bogus'"),
    row("tokenizer-train-set-wrong-type", "tokenizer train --data {D} --preset tiny --out {W}/t5 --set optim.lr=abc",
        "'optim.lr' must be float"),
    row("tokenizer-train-set-bad-value", "tokenizer train --data {D} --preset tiny --out {W}/t6 --set optim.lr=-1",
        "learning rates must be > 0"),
    row("tokenizer-train-set-no-equals", "tokenizer train --data {D} --preset tiny --out {W}/t7 --set optim.lr",
        "must look like field.sub=value"),
    row("tokenizer-train-steps-zero", "tokenizer train --data {D} --preset tiny --out {W}/t8 --steps 0",
        "must be positive"),
    row("tokenizer-train-out-is-file", "tokenizer train --data {D} --preset tiny --out {F} --steps 2", "{F}"),
    row("tokenizer-train-out-under-file", "tokenizer train --data {D} --preset tiny --out {F}/sub --steps 2", "{F}"),
    row("tokenizer-train-out-in-proc", "tokenizer train --data {D} --preset tiny --out /proc/vqgen-nope --steps 2",
        "/proc/vqgen-nope"),
    row("tokenizer-train-text-encoder-missing",
        "tokenizer train --data {D} --preset tiny --out {W}/t9 --steps 2 --text-encoder {W}/nope", "not found"),
    row("tokenizer-resume-pickle-payload", "tokenizer train --data {D} --preset tiny --out {R_PICKLE} --steps 4",
        "resume.pt cannot be read"),
    row("tokenizer-resume-truncated-resume-pt", "tokenizer train --data {D} --preset tiny --out {R_TRUNC} --steps 4",
        "resume.pt cannot be read"),
    row("tokenizer-resume-truncated-safetensors",
        "tokenizer train --data {D} --preset tiny --out {R_SAFETENSORS} --steps 4", "model.safetensors cannot be loaded"),
    row("tokenizer-eval-config-null", "tokenizer eval {M_NULL} --data {D}", "must hold a JSON object, got null"),
    row("tokenizer-eval-model-missing", "tokenizer eval {W}/nope --data {D}", "holds no tokenizer"),
    row("tokenizer-eval-model-is-file", "tokenizer eval {F} --data {D}", "holds no tokenizer"),
    row("tokenizer-eval-data-missing", "tokenizer eval {R} --data {W}/nope", "does not exist"),
    row("tokenizer-eval-device-bogus", "tokenizer eval {R} --data {D} --device bogus", "unknown device 'bogus'"),
    row("tokenizer-eval-fid-features-missing", "tokenizer eval {R} --data {D} --fid-features {W}/nope.pt",
        "not found"),
    row("tokenizer-eval-fid-features-not-torchscript", "tokenizer eval {R} --data {D} --fid-features {F}",
        "is not a TorchScript feature network"),
    row("tokenizer-eval-out-under-file", "tokenizer eval {R} --data {D} --out {F}/x.json", "{F}"),
    row("tokenizer-eval-out-is-folder", "tokenizer eval {R} --data {D} --out {EMPTY}", "{EMPTY}"),
    row("tokenizer-eval-out-in-proc", "tokenizer eval {R} --data {D} --out /proc/vqgen-nope.json", "/proc"),
    row("tokenizer-eval-split-unknown", "tokenizer eval {R} --data {D} --split bogus", "invalid choice: 'bogus'"),
    row("tokenizer-eval-batch-size-zero", "tokenizer eval {R} --data {D} --batch-size 0", "must be positive"),
    row("tokenizer-encode-config-null", "tokenizer encode {M_NULL} --data {D} --out {W}/c1",
        "must hold a JSON object, got null"),
    row("tokenizer-encode-out-is-file", "tokenizer encode {R} --data {D} --out {F}", "cannot write codes to"),
    row("tokenizer-encode-out-in-proc", "tokenizer encode {R} --data {D} --out /proc/vqgen-nope",
        "cannot write codes to"),
    row("tokenizer-encode-data-empty", "tokenizer encode {R} --data {EMPTY} --out {W}/c2", "no image files"),
    row("tokenizer-encode-shard-size-zero", "tokenizer encode {R} --data {D} --out {W}/c3 --shard-size 0",
        "must be positive"),
    row("tokenizer-decode-codes-missing", "tokenizer decode {R} --codes {W}/nope --out {W}/o1", "not a code directory"),
    row("tokenizer-decode-info-bad-json", "tokenizer decode {R} --codes {C_BADJSON} --out {W}/o2", "is not valid JSON"),
    row("tokenizer-decode-info-null", "tokenizer decode {R} --codes {C_NULL} --out {W}/o3",
        "must hold a JSON object, got null"),
    row("tokenizer-decode-shard-missing", "tokenizer decode {R} --codes {C_NOSHARD} --out {W}/o4",
        "shard shard-00000 cannot be read"),
    row("tokenizer-decode-limit-zero", "tokenizer decode {R} --codes {C} --out {W}/o5 --limit 0", "must be positive"),
    row("tokenizer-decode-out-is-file", "tokenizer decode {R} --codes {C} --out {F}", "exists and is not a directory"),
    # --- train, probe, transformer presets ---------------------------------------------------------
    row("train-codes-missing", "train --codes {W}/nope --preset vim-tiny --out {W}/r1", "not a code directory"),
    row("train-codes-info-bad-json", "train --codes {C_BADJSON} --preset vim-tiny --out {W}/r2", "is not valid JSON"),
    row("train-codes-info-null", "train --codes {C_NULL} --preset vim-tiny --out {W}/r3", "got null"),
    row("train-codes-shard-missing", "train --codes {C_NOSHARD} --preset vim-tiny --out {W}/r4", "cannot be read"),
    row("train-preset-unknown", "train --codes {C} --preset bogus --out {W}/r5", "unknown transformer preset"),
    row("train-set-unknown-field", "train --codes {C} --preset vim-tiny --out {W}/r6 --set train.bogus=1",
        "unknown config field 'train.bogus'"),
    row("train-set-wrong-type", "train --codes {C} --preset vim-tiny --out {W}/r7 --set train.lr=abc",
        "'train.lr' must be float"),
    row("train-set-bad-value", "train --codes {C} --preset vim-tiny --out {W}/r8 --set train.lr=-1", "must be > 0"),
    row("train-set-bad-grid", "train --codes {C} --preset vim-tiny --out {W}/r9 --set model.grid=a,b",
        "'model.grid' must be int"),
    row("train-steps-zero", "train --codes {C} --preset vim-tiny --out {W}/r10 --steps 0", "must be positive"),
    row("train-out-is-file", "train --codes {C} --preset vim-tiny --out {F} --steps 2", "{F}"),
    row("train-out-in-proc", "train --codes {C} --preset vim-tiny --out /proc/vqgen-nope --steps 2", "/proc"),
    row("train-text-tokenizer-missing",
        "train --codes {C} --preset parti-tiny --out {W}/r11 --steps 2 --text-tokenizer {W}/nope", "not found"),
    row("probe-data-missing", "probe {R} --data {W}/nope --layer 1", "not a code directory"),
    row("probe-layer-zero", "probe {R} --data {C} --layer 0", "must be positive"),
    row("transformer-presets-set-wrong-type", "transformer presets --set model.grid=x", "'model.grid' must be int"),
    row("transformer-presets-set-unknown-field", "transformer presets --set bogus=1", "unknown config field"),
    row("transformer-presets-set-no-equals", "transformer presets --set model", "must look like field.sub=value"),
    # --- rerank, superres ---------------------------------------------------------------------------
    row("rerank-train-data-missing", "rerank train --data {W}/nope --out {W}/k1 --preset tiny", "does not exist"),
    row("rerank-train-data-empty", "rerank train --data {EMPTY} --out {W}/k2 --preset tiny", "no image files"),
    row("rerank-train-set-unknown-field", "rerank train --data {D} --out {W}/k3 --preset tiny --set bogus=1",
        "unknown config field 'bogus'"),
    row("rerank-train-out-is-file", "rerank train --data {D} --out {F} --preset tiny --steps 2", "{F}"),
    row("rerank-train-out-in-proc", "rerank train --data {D} --out /proc/vqgen-nope --preset tiny --steps 2", "/proc"),
    row("rerank-eval-model-missing", "rerank eval {W}/nope --data {D}", "holds no reranker"),
    row("rerank-eval-not-a-reranker", "rerank eval {P}/tokenizer --data {D}", "holds no reranker"),
    row("rerank-eval-group-one", "rerank eval {P}/reranker --data {D} --group 1", "must be >= 2"),
    row("rerank-eval-candidates-one", "rerank eval {P}/reranker --data {D} --candidates 1", "must be >= 2"),
    row("superres-train-tokenizer-missing",
        "superres train --data {D} --tokenizer {W}/nope --out {W}/s1 --preset tiny", "holds no tokenizer"),
    row("superres-train-tokenizer-config-null",
        "superres train --data {D} --tokenizer {M_NULL} --out {W}/s2 --preset tiny", "got null"),
    row("superres-train-data-missing", "superres train --data {W}/nope --tokenizer {R} --out {W}/s3 --preset tiny",
        "does not exist"),
    row("superres-train-data-too-small", "superres train --data {D} --tokenizer {R} --out {W}/s4 --preset tiny",
        "needs at least 32x32"),
    row("superres-train-scale-3", "superres train --data {D} --tokenizer {R} --out {W}/s5 --scale 3",
        "invalid choice: 3"),
    # --- generate -----------------------------------------------------------------------------------
    row("generate-decoder-unknown", "generate 'a red circle' --model {P} --decoder magic -n 1",
        "unknown decoder 'magic'"),
    row("generate-sjd-window-too-large", "generate 'a red circle' --model {P} --decoder sjd --sjd-window 100000 -n 1",
        "sjd_window"),
    row("generate-out-is-file", "generate 'a red circle' --model {P} --out {F} -n 1", "cannot create the folder {F}"),
    row("generate-out-under-file", "generate 'a red circle' --model {P} --out {F}/sub -n 1",
        "cannot create the folder {F}/sub"),
    row("generate-out-in-proc", "generate 'a red circle' --model {P} --out /proc/vqgen-nope -n 1",
        "cannot create the folder /proc/vqgen-nope"),
    row("generate-seed-2**64", "generate 'a red circle' --model {P} --seed 18446744073709551616 -n 1", "'seed'"),
    row("generate-seed-negative", "generate 'a red circle' --model {P} --seed -1 -n 1", "'seed'"),
    row("generate-device-bogus", "generate 'a red circle' --model {P} --device bogus -n 1", "unknown device 'bogus'"),
    row("generate-n-100000", "generate 'a red circle' --model {P} -n 100000", "more than 10000 images"),
    row("generate-guidance-negative", "generate 'a red circle' --model {P} --guidance -1 -n 1", "'guidance_scale'"),
    row("generate-guidance-nan", "generate 'a red circle' --model {P} --guidance nan -n 1", "'guidance_scale'"),
    row("generate-rerank-10000", "generate 'a red circle' --model {P} --rerank 10000 -n 1", "'rerank'"),
    row("generate-temperature-negative", "generate 'a red circle' --model {P} --temperature -1 -n 1", "'temperature'"),
    row("generate-top-p-2", "generate 'a red circle' --model {P} --top-p 2 -n 1", "'top_p'"),
    row("generate-top-k-negative", "generate 'a red circle' --model {P} --top-k -3 -n 1", "'top_k'"),
    row("generate-cluster-without-clusters", "generate 'a red circle' --model {P} --cluster 5 -n 1",
        "no codebook clusters"),
    row("generate-decoder-unknown", "generate 'a red circle' --model {P} --decoder bogus -n 1", "unknown decoder"),
    row("generate-batch-size-zero", "generate 'a red circle' --model {P} --batch-size 0 -n 1", "must be positive"),
    row("generate-prompt-empty", "generate '' --model {P} -n 1", "the prompt is empty"),
    row("generate-prompt-too-long", "generate " + "x" * 5000 + " --model {P} -n 1", "more than the limit"),
    row("generate-model-missing", "generate 'a red circle' --model {W}/nope -n 1", "does not exist"),
    row("generate-model-is-file", "generate 'a red circle' --model {F} -n 1", "{F}"),
    row("generate-pipeline-json-null", "generate 'a red circle' --model {P_NULL} -n 1", "got null"),
    row("generate-component-config-null", "generate 'a red circle' --model {P_CNULL} -n 1", "got null"),
    row("generate-prefix-image-missing",
        "generate 'a red circle' --model {P} --prefix-image {W}/nope.png --prefix-rows 1 -n 1", "--prefix-image"),
    row("generate-prefix-image-not-an-image",
        "generate 'a red circle' --model {P} --prefix-image {F} --prefix-rows 1 -n 1", "--prefix-image"),
    row("generate-prefix-rows-too-many",
        "generate 'a red circle' --model {P} --prefix-image {D}/000000.png --prefix-rows 99 -n 1", "prefix_rows"),
    row("generate-super-resolution-without-upsampler", "generate 'a red circle' --model {P} --super-resolution -n 1",
        "upsampler"),
    row("generate-no-prompt", "generate --model {P} -n 1", "give a PROMPT"),
    row("generate-class-on-a-text-pipeline", "generate --class cat --model {P} -n 1", "needs a class-conditional"),
    row("generate-n-zero", "generate 'a red circle' --model {P} -n 0", "must be positive"),
    row("generate-prefix-rows-zero",
        "generate 'a red circle' --model {P} --prefix-image {D}/000000.png --prefix-rows 0 -n 1", "must be positive"),
    row("generate-prefix-rows-without-image", "generate 'a red circle' --model {P} --prefix-rows 1 -n 1",
        "needs both a prefix image and a number of prefix rows"),
    # --- pipeline -----------------------------------------------------------------------------------
    row("pipeline-build-tokenizer-missing", "pipeline build --tokenizer {W}/nope --transformer {P}/transformer "
        "--out {W}/p1", "{W}/nope"),
    row("pipeline-build-out-is-file", "pipeline build --tokenizer {P}/tokenizer --transformer {P}/transformer "
        "--out {F_BUILD}", "{F_BUILD}"),
    row("pipeline-build-out-in-proc", "pipeline build --tokenizer {P}/tokenizer --transformer {P}/transformer "
        "--out /proc/vqgen-nope", "/proc"),
    row("pipeline-build-set-unknown-field", "pipeline build --tokenizer {P}/tokenizer --transformer {P}/transformer "
        "--out {W}/p2 --set bogus=1", "unknown config field 'bogus'"),
    row("pipeline-build-set-rerank-999", "pipeline build --tokenizer {P}/tokenizer --transformer {P}/transformer "
        "--out {W}/p3 --set rerank=999", "'rerank'"),
    row("pipeline-build-class-names-on-text", "pipeline build --tokenizer {P}/tokenizer --transformer "
        "{P}/transformer --out {W}/p4 --class-names a,b", "class-conditional"),
    row("pipeline-build-reranker-missing", "pipeline build --tokenizer {P}/tokenizer --transformer {P}/transformer "
        "--out {W}/p5 --reranker {W}/nope", "is not a saved model"),
    row("pipeline-build-upsampler-missing", "pipeline build --tokenizer {P}/tokenizer --transformer {P}/transformer "
        "--out {W}/p6 --upsampler {W}/nope", "is not a saved model"),
    row("pipeline-build-reranker-is-a-tokenizer", "pipeline build --tokenizer {P}/tokenizer --transformer "
        "{P}/transformer --out {W}/p7 --reranker {P}/tokenizer", "cannot be a reranker"),
    row("pipeline-build-tokenizer-is-a-transformer", "pipeline build --tokenizer {P}/transformer --transformer "
        "{P}/transformer --out {W}/p8", "not a VQTokenizer"),
    row("pipeline-clusters-missing", "pipeline clusters {W}/nope --num 4", "does not exist"),
    row("pipeline-clusters-num-too-many", "pipeline clusters {P} --num 100000", "num_clusters"),
    row("pipeline-clusters-num-zero", "pipeline clusters {P} --num 0", "must be positive"),
    row("pipeline-clusters-seed-negative", "pipeline clusters {P} --num 4 --seed -1", "seed"),
    row("pipeline-clusters-pipeline-json-null", "pipeline clusters {P_NULL} --num 4", "got null"),
    # --- eval ---------------------------------------------------------------------------------------
    row("eval-shapes-nothing-to-score", "eval shapes", "one of the arguments"),
    row("eval-shapes-images-and-model", "eval shapes --images {D} --model {P}", "not allowed with"),
    row("eval-shapes-images-missing", "eval shapes --images {W}/nope", "does not exist"),
    row("eval-shapes-images-without-metadata", "eval shapes --images {EMPTY}", "metadata.jsonl"),
    row("eval-shapes-details-under-file", "eval shapes --images {D} --details {F}/x.jsonl", "{F}"),
    row("eval-shapes-model-without-out", "eval shapes --model {P}", "needs --out"),
    row("eval-shapes-prompts-missing", "eval shapes --model {P} --out {W}/e1 --prompts {W}/nope.jsonl",
        "does not exist"),
    row("eval-shapes-prompts-bad-json", "eval shapes --model {P} --out {W}/e2 --prompts {BADJSONL}", "bad.jsonl:1"),
    row("eval-shapes-guidance-not-numbers", "eval shapes --model {P} --out {W}/e3 --guidance x,-1",
        "comma-separated numbers"),
    row("eval-shapes-device-bogus", "eval shapes --model {P} --out {W}/e4 --device bogus", "unknown device"),
    row("eval-shapes-per-category-zero", "eval shapes --model {P} --out {W}/e5 --per-category 0", "per_category"),
    row("eval-shapes-samples-zero", "eval shapes --model {P} --out {W}/e6 --samples 0", "samples must be >= 1"),
    row("eval-shapes-batch-zero", "eval shapes --model {P} --out {W}/e7 --batch 0", "must be >= 1"),
    row("eval-shapes-temperature-negative", "eval shapes --model {P} --out {W}/e8 --temperature -1", "'temperature'"),
    row("eval-shapes-decoder-unknown", "eval shapes --model {P} --out {W}/e9 --decoder bogus", "unknown decoder"),
    row("eval-shapes-cluster-without-clusters", "eval shapes --model {P} --out {W}/e10 --cluster 3",
        "no codebook clusters"),
    row("eval-shapes-reranker-missing", "eval shapes --model {P} --out {W}/e11 --reranker {W}/nope --rerank 2",
        "holds no reranker"),
    row("eval-shapes-tokenizer-missing", "eval shapes --tokenizer {W}/nope", "is not a saved model"),
    row("eval-shapes-data-out-is-file", "eval shapes --model {P} --out {W}/e12 --data-out {F} --per-category 1 "
        "--samples 1 --no-progress", "{F}"),
    row("eval-shapes-seed-negative", "eval shapes --model {P} --out {W}/e13 --seed -1", "seed"),
    row("eval-shapes-rerank-10000", "eval shapes --model {P} --out {W}/e14 --rerank 10000", "rerank"),
    row("eval-shapes-out-is-file", "eval shapes --model {P} --out {F_REPORT} --per-category 1 --samples 1 "
        "--no-progress", "{F_REPORT}"),
    # --- serve (each fails before serving; --port 0 so a busy port 8000 changes nothing) --------------
    row("serve-port-out-of-range", "serve --model {P} --port 99999", "cannot listen"),
    row("serve-api-key-empty", "serve --model {P} --port 0 --api-key ''", "the API key is empty"),
    row("serve-model-missing", "serve --model {W}/nope --port 0", "does not exist"),
    row("serve-pipeline-json-null", "serve --model {P_NULL} --port 0", "got null"),
    row("serve-device-bogus", "serve --model {P} --port 0 --device bogus", "unknown device"),
    row("serve-decoder-unknown", "serve --model {P} --port 0 --decoder magic", "unknown decoder 'magic'"),
    row("serve-read-timeout-zero", "serve --model {P} --port 0 --read-timeout 0", "must be positive"),
    row("serve-batch-window-negative", "serve --model {P} --port 0 --batch-window-ms -5", "batch_window"),
    row("serve-max-batch-zero", "serve --max-batch 0", "must be positive"),
    row("serve-timeout-zero", "serve --timeout 0", "must be positive"),
    row("serve-url-ttl-zero", "serve --url-ttl 0", "must be positive"),
    row("serve-log-level-unknown", "serve --log-level bogus", "invalid choice: 'bogus'"),
    row("serve-port-negative", "serve --model {P} --port -1", "cannot listen"),
    row("serve-port-not-a-number", "serve --port abc", "invalid int value"),
    # --- milestone 2: editing, hierarchy, diffusion, motion, video, scale-out -------------------------
    row("data-code-shards-not-codes", "data code-shards {W}/nope {W}/cs", "is not a code directory"),
    row("data-motion-out-is-file", "data motion --out {F} --num 2 --size 32", "exists and is not a directory"),
    row("data-motion-num-zero", "data motion --out {W}/mo --num 0", "argument --num: 0 must be positive"),
    row("diffusion-pipeline-base-missing", "diffusion pipeline --base {W}/nope --out {W}/dp", "holds no saved model"),
    row("diffusion-train-data-missing", "diffusion train --data {W}/nope --preset tiny --out {W}/d1 --steps 2",
        "does not exist"),
    row("diffusion-train-preset-unknown", "diffusion train --data {D} --preset bogus --out {W}/d2 --steps 2",
        "unknown diffusion-train preset 'bogus'"),
    row("edit-image-missing", "edit {W}/nope.png 'a red circle' --box 0,0,8,8 --model {P} --out {W}/e1",
        "cannot read"),
    row("edit-image-not-an-image", "edit {F} 'a red circle' --box 0,0,8,8 --model {P} --out {W}/e2",
        "not a recognised image format"),
    row("edit-box-three-numbers", "edit {F} 'a red circle' --box 0,0,8 --model {P} --out {W}/e3",
        "--box must be four numbers"),
    row("eval-edits-model-missing", "eval edits --model {W}/nope", "does not exist"),
    row("eval-motion-videos-missing", "eval motion --videos {W}/nope", "does not exist"),
    row("eval-motion-videos-empty", "eval motion --videos {EMPTY}", "has no metadata.jsonl"),
    row("export-no-checkpoint", "export {EMPTY} --out {W}/x1", "has no checkpoint"),
    row("hierarchical-build-model-missing",
        "hierarchical build --tokenizer {W}/nope --sr {W}/nope --stage1 {W}/nope --out {W}/h2", "holds no saved model"),
    row("hierarchical-train-preset-unknown",
        "hierarchical train --low-codes {C} --high-codes {C} --stage1 {W}/nope --preset bogus --out {W}/h1",
        "unknown hierarchical preset 'bogus'"),
    row("plan-preset-unknown", "plan --preset bogus", "unknown transformer preset 'bogus'"),
    row("plan-gpus-zero", "plan --preset parti-3b --gpus 0", "argument --gpus: 0 must be positive"),
    row("video-build-model-missing", "video build --tokenizer {W}/nope --transformer {W}/nope --out {W}/vb",
        "holds no saved model"),
    row("video-encode-data-missing", "video encode --data {W}/nope --tokenizer {R} --out {W}/ve", "does not exist"),
    row("video-eval-model-missing", "video eval --model {W}/nope", "does not exist"),
    row("video-generate-frames-six", "video generate 'a red circle moves up' --frames 6 --out {W}/v1",
        "--frames must be one of 5, 9, 17, 33"),
    row("video-train-no-image-model", "video train --codes {C} --preset video-key --out {W}/vt",
        "name the image model to inherit"),
]


def _copy_and_break(src: Path, dst: Path, rel: str, data: bytes | None = None, cut: bool = False) -> Path:
    shutil.copytree(src, dst)
    target = dst / rel
    if cut:
        raw = target.read_bytes()
        target.write_bytes(raw[:len(raw) // 2])
    else:
        target.write_bytes(data)
    return dst


class _Payload:
    """Unpickling this would run a shell command (torch.load must refuse it)."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict:
    """The paths the table's ``{NAME}`` fields name (built once: ~10 s of tiny training and encoding)."""
    from tests.tiny import tiny_pipeline
    from vqgen.shapes.dataset import write_shapes_dataset

    w = tmp_path_factory.mktemp("bad_input")
    p = {"W": w, "EMPTY": w / "EMPTY", "D": w / "D", "R": w / "R", "C": w / "C", "P": w / "P",
         "BADCLASSES": w / "BADCLASSES", "BADJSONL": w / "bad.jsonl"}
    for name in PLAIN_FILES:
        p[name] = w / name
        p[name].write_text(PLAIN_TEXT)
    p["EMPTY"].mkdir()
    p["BADCLASSES"].mkdir()
    (p["BADCLASSES"] / "classes.json").write_text("{nope")
    (p["BADCLASSES"] / "metadata.jsonl").write_text("")
    p["BADJSONL"].write_text('{"prompt": "a red circle"\n')
    write_shapes_dataset(p["D"], 16, 16, 0, progress=False)
    assert main(["tokenizer", "train", "--data", str(p["D"]), "--preset", "tiny", "--out", str(p["R"]),
                 "--steps", "2", "--no-progress"]) == 0
    assert main(["tokenizer", "encode", str(p["R"]), "--data", str(p["D"]), "--out", str(p["C"]),
                 "--no-progress"]) == 0
    tiny_pipeline("parti", reranker="clip").save_pretrained(p["P"])
    step = next((p["R"] / "checkpoints").glob("step-*")).name
    payload = w / "payload.pt"
    torch.save({"step": _Payload()}, payload)
    p["R_PICKLE"] = _copy_and_break(p["R"], w / "R_pickle", f"checkpoints/{step}/resume.pt", payload.read_bytes())
    p["R_TRUNC"] = _copy_and_break(p["R"], w / "R_trunc", f"checkpoints/{step}/resume.pt", cut=True)
    weights = next((p["R"] / "checkpoints" / step).rglob("model.safetensors")).relative_to(p["R"])
    p["R_SAFETENSORS"] = _copy_and_break(p["R"], w / "R_safetensors", str(weights), cut=True)
    p["M_NULL"] = _copy_and_break(p["R"] / "model", w / "M_null", "config.json", b"null\n")
    p["C_BADJSON"] = _copy_and_break(p["C"], w / "C_badjson", "info.json", b"{not json")
    p["C_NULL"] = _copy_and_break(p["C"], w / "C_null", "info.json", b"null\n")
    p["C_NOSHARD"] = w / "C_noshard"
    shutil.copytree(p["C"], p["C_NOSHARD"])
    (p["C_NOSHARD"] / "shard-00000.safetensors").unlink()
    p["P_NULL"] = _copy_and_break(p["P"], w / "P_null", "pipeline.json", b"null\n")
    p["P_CNULL"] = _copy_and_break(p["P"], w / "P_cnull", "transformer/config.json", b"null\n")
    return {k: str(v) for k, v in p.items()}


# Plain files that rows pass where a folder goes: each must come out of every row untouched
# (a row that would destroy one gets its own, so the others still meet a file).
PLAIN_FILES, PLAIN_TEXT = ("F", "F_REPORT", "F_BUILD"), "a plain file\n"


def files_untouched(ws: dict) -> list[str]:
    """The plain files a command replaced or changed (each is put back for the rows after it)."""
    changed = []
    for name in PLAIN_FILES:
        path = Path(ws[name])
        if not path.is_file() or path.read_text() != PLAIN_TEXT:
            changed.append(name)
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            path.write_text(PLAIN_TEXT)
    return changed


def check_refused(code, err: str, message: str) -> None:
    errors = [line for line in err.splitlines() if ERROR_LINE.match(line)]
    assert "Traceback" not in err, err
    assert code == 2 and len(errors) == 1, f"exit {code}, stderr:\n{err}"
    assert message in errors[0], errors[0]


@pytest.mark.parametrize("command,message", ROWS)
def test_refused(ws, capsys, command, message):
    argv = shlex.split(command.format(**ws))
    capsys.readouterr()
    try:
        code = main(argv)  # any other exception escapes: the console script would print a traceback
    except SystemExit as e:  # argparse usage errors
        code = e.code
    finally:
        changed = files_untouched(ws)
    check_refused(code, capsys.readouterr().err, message.format(**ws))
    assert not changed, f"the command replaced the user's file(s) {changed}"


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    """Every runnable command, e.g. ``tokenizer train``, ``generate``."""
    out = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                subs = _commands(sub)
                out |= {f"{name} {s}" for s in subs} if subs else {name}
    return out


def test_every_command_has_a_row():
    covered = {" ".join(p.values[0].split()[:2]) for p in ROWS} | {p.values[0].split()[0] for p in ROWS}
    missing = sorted(c for c in _commands(build_parser()) if c not in covered)
    assert not missing, f"commands without a bad-input row: {missing}"


# The real console entry point on a few rows (each run costs an interpreter start and imports).
E2E = ["generate-out-is-file", "tokenizer-resume-pickle-payload"]


def _console() -> list[str]:
    script = Path(sys.executable).with_name("vqgen")
    return [str(script)] if script.exists() else [sys.executable, "-m", "vqgen"]


@pytest.mark.parametrize("command,message", [p for p in ROWS if p.id in E2E])
def test_console_script_end_to_end(ws, command, message):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(_console() + shlex.split(command.format(**ws)), capture_output=True, text=True,
                          timeout=120, env=env, cwd=ws["W"])
    changed = files_untouched(ws)
    check_refused(done.returncode, done.stderr, message.format(**ws))
    assert not changed, f"the command replaced the user's file(s) {changed}"
