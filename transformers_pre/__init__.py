"""The search transformer: shopper request -> ranked product list (KServe model ``search``)."""
