from factory import TINY_KWARGS, TINY_MODEL


def test_tiny_model_embeds_real_img2dataset_output(testdata, aesthetic_weights):
    """The real img2dataset output, every row out, scored or with a reason."""
    from nemo_aesthetic.datasets import ImageTextPairDataset
    from nemo_aesthetic.image.classifiers import AestheticClassifier
    from nemo_aesthetic.image.embedders import TimmImageEmbedder

    ds = ImageTextPairDataset.from_webdataset(str(testdata / "img2dataset_output" / "disable_all_reencoding"))
    emb = TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS, batch_size=4,
                            classifiers=[AestheticClassifier(model_path=aesthetic_weights)])
    df = emb(ds).metadata.compute(scheduler="sync")
    assert len(df) == 28
    scored = df["aesthetic_score"].notna()
    assert (scored == df["error"].isna()).all()
    assert df.loc[df.status != "success", "error"].str.contains("failed_to_download").all()
