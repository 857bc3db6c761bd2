fn main() {
    std::process::exit(milvus_backfill::cli::main());
}
