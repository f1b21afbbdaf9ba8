"""karpalign-train's command line: config and data errors are exit code 2 with the key or file named."""


def test_cli_reports_config_and_data_errors(tmp_path, capsys):
    from karpalign.cli.train import main

    assert main(["--task", "align", "--set", "train.stepz=3"]) == 2
    assert "unknown config key 'train.stepz'" in capsys.readouterr().err
    assert main(["--task", "align", "--set", f"data.records_dir={tmp_path}"]) == 2
    assert "manifest.json not found" in capsys.readouterr().err
