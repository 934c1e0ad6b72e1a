"""`python -m store export` shards read back by embedding-reader, the library autofaiss and clip-retrieval users read
them with: every row, in the store's order, L2-normalised float16 features and the metadata columns."""
import embedding_reader
import numpy as np

from store import FeatureStore
from store.cli import main as store_main
from synthstore import A, make_store

def test_embedding_reader_reads_an_export(tmp_path, capsys):
    path, _ = make_store(tmp_path / "s.h5")
    out = tmp_path / "shards"
    store_main(["export", "--store", str(path), "--backbone", A, "--out", str(out), "--shard-size", "50"])
    reader = embedding_reader.EmbeddingReader(embeddings_folder=str(out / "img_emb"), file_format="parquet_npy",
                                              metadata_folder=str(out / "metadata"),
                                              meta_columns=["id", "split", "label", "status"])
    with FeatureStore(path) as fs:
        ids, X = fs.ids.tolist(), fs.load(A).X
    assert reader.count == len(ids) and reader.dimension == X.shape[1]
    embeddings, metadata = [], []
    for emb, meta in reader(batch_size=40, start=0, end=reader.count, show_progress=False):
        embeddings.append(emb)
        metadata.append(meta)
    emb = np.concatenate(embeddings)
    assert np.load(out / "img_emb" / "img_emb_0.npy").dtype == np.float16  # what autofaiss indexes
    assert np.allclose(np.linalg.norm(emb.astype(np.float32), axis=1), 1, atol=1e-2)
    expected = X / np.linalg.norm(X, axis=1, keepdims=True)
    np.testing.assert_allclose(emb.astype(np.float32), expected, atol=2e-3)
    assert [i for m in metadata for i in m["id"]] == ids and {s for m in metadata for s in m["status"]} == {"ok"}
