fn main() {
    std::process::exit(milvus_backfill_operator::cli::main());
}
