# One command each: `make run` starts the dashboard, `make test` runs the whole test suite.
# Both create the virtual environment from requirements.txt on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test train reproduce-weights bench clean-venv

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

run: $(VENV)/.installed  ## dashboard on http://localhost:8501 (bound to localhost; see .streamlit/config.toml)
	$(PY) -m streamlit run streamlit_app.py

test: $(VENV)/.installed  ## full pytest suite, browser end-to-end test included
	$(PY) -m pytest

train: $(VENV)/.installed  ## train a fresh model from scratch (CPU: about an hour); `make reproduce-weights` re-runs the shipped one's commands
	$(PY) train.py --data-root ../shared/data/brain-tumor-mri --out weights --epochs 30 --seed 42

DATA ?= ../shared/data/brain-tumor-mri
# Step 1 ran before --head-search existed; it pins the crop it used (the default is now gamma_otsu).
reproduce-weights: $(VENV)/.installed  ## re-run the commands recorded in weights/model_card.json (CPU: about 6 h)
	$(PY) train.py --data-root $(DATA) --out runs/reproduce/1 --epochs 24 --threads 1 --seed 42 --head-search otsu
	$(PY) train.py --data-root $(DATA) --init-from runs/reproduce/1 --out runs/reproduce/2 --epochs 12 --lr 1.5e-3 --threads 2 --seed 42
	$(PY) train.py --data-root $(DATA) --init-from runs/reproduce/2 --out runs/reproduce/3 --epochs 60 --lr 1e-3 --patience 60 --threads 2 --seed 42
	$(PY) train.py --data-root $(DATA) --init-from runs/reproduce/3 --out runs/reproduce/4 --epochs 45 --lr 7e-4 --patience 45 --ema 0.998 --threads 2 --seed 42 --version 1.1.0
	$(PY) train.py --data-root $(DATA) --init-from runs/reproduce/4 --out runs/reproduce/5 --epochs 35 --lr 5e-4 --patience 35 --gamma-range 0.5 2.0 --ema 0.998 --tta hflip --threads 2 --seed 42 --version 1.3.0
	$(PY) train.py --data-root $(DATA) --init-from runs/reproduce/5 --out runs/reproduce/6 --head-search gamma_otsu --epochs 10 --lr 4e-4 --patience 10 --gamma-range 0.5 2.0 --ema 0.998 --tta hflip --threads 2 --seed 42 --version 1.4.0

bench: $(VENV)/.installed  ## speed benchmark; writes bench/results/*.json
	$(PY) -m bench

clean-venv:
	rm -rf $(VENV)
