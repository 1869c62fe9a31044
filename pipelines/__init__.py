"""inferline.pipelines."""
