"""One plain function per command, in the module named like the command's group (and like its `nmtkit.cli`
module): wire data, tokenizer, model and training together and return results.

    text         train-tokenizer, tokenize, download
    translation  train-translator, translate, score, evaluate (translators)
    lm           pretrain, generate
    finetune     finetune, classify, answer, evaluate (fine-tuned runs)
    vectors      build-vocab, train-embeddings, similarity, neighbors, analogy
    see          attention, plot, compare
    runs         info, average; and the run-folder layer all of them share (open, resume, record)

Nothing here prints or exits (that is `nmtkit.cli`); progress goes through the `nmtkit` logger. Heavy
libraries (torch, datasets) are imported inside the functions that need them.
"""
