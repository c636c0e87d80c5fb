"""The consensus service (what `cryospire consensus` and the napari sample data call): a new fit
writes the mixture and the run's config with the seed map and checkpoint interval a resume reads
back; a seed map off the particles' lattice is refused before any config is written (the
corrected request then starts anew, not as a resume); a second
start is refused naming the caller's resume; a resume keeps the killed fit's config."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from cryospire_core.errors import InputError
from cryospire_core.io.load import ParticleSource
from cryospire_core.io.mrc import read_map, write_map
from cryospire_core.models.consensus import ConsensusConfig
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.services.consensus import ConsensusRequest, consensus_run

SMALL = ConsensusConfig(n_gaussians=512, epochs=1, map_fit_steps=10)


def test_a_fit_saves_what_a_resume_reads_back(homogeneous_32, tmp_path):
    out = tmp_path / "run"
    request = ConsensusRequest(source=ParticleSource(homogeneous_32 / "particles.star"), out=out, config=SMALL,
                               checkpoint_minutes=0.5, resume_hint="the Resume button", device="cpu",
                               command={"gui": "test"})
    with consensus_run(request) as job:
        assert job.summary() == "2000 particles of 32 px at 12 Å/px on cpu"
        result = job.fit()
    assert result.status == "finished" and result.model.amplitudes.numel() == 512
    run = RunFolder(out)
    assert read_map(run.backprojection_path).data.shape == (32, 32, 32)  # the seed, cached for a resume
    assert run.map_path("consensus").is_file() and run.gaussians_path.is_file()
    saved = run.config()
    assert saved["consensus"] == dataclasses.asdict(SMALL)
    assert saved["consensus_command"] == {"gui": "test", "map": None, "checkpoint_minutes": 0.5}

    with pytest.raises(InputError, match="the Resume button to continue this run"), consensus_run(request):
        pass

    # A resume keeps the saved config, seed map and checkpoint interval, whatever it asks for.
    saved["consensus_command"]["map"] = "seed.mrc"
    run.config_path.write_text(json.dumps(saved))
    again = dataclasses.replace(request, config=ConsensusConfig(epochs=5), checkpoint_minutes=9.0, resume=True)
    with consensus_run(again) as job:
        assert (job.config, job.map, job.checkpoint_minutes, job.command) == (SMALL, "seed.mrc", 0.5, None)

    saved["consensus_command"]["checkpoint_minutes"] = -1
    run.config_path.write_text(json.dumps(saved))
    with pytest.raises(InputError, match="consensus_command"), consensus_run(again):
        pass


def test_a_seed_map_off_the_lattice_is_refused_before_the_config_is_written(homogeneous_32, tmp_path):
    seed = tmp_path / "seed.mrc"
    write_map(seed, np.zeros((16, 16, 16), np.float32), 12.0)
    request = ConsensusRequest(source=ParticleSource(homogeneous_32 / "particles.star"), out=tmp_path / "run", map=seed,
                               config=SMALL, device="cpu")
    with pytest.raises(InputError, match="map grid"), consensus_run(request) as job:
        job.fit()
    assert not RunFolder(tmp_path / "run").config_path.exists()
    with consensus_run(dataclasses.replace(request, map=None)) as job:  # the corrected request starts anew
        assert job.command == {"map": None, "checkpoint_minutes": 5.0}
